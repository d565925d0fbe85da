// Go's echo server over a Unix domain socket, written the way Go code usually
// is: the standard library only, one goroutine per connection.
//
//	go build -o echo-go . && GOMAXPROCS=1 ./echo-go /tmp/echo.sock
//
// A connection echoes until the client shuts down its write side: every byte
// read has been written back by then, so the server closes and the client
// reads the end of the stream. GOMAXPROCS is left to the caller.
package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func echo(conn net.Conn) {
	defer conn.Close()
	buffer := make([]byte, 64<<10)
	for {
		n, err := conn.Read(buffer)
		if n > 0 {
			if _, werr := conn.Write(buffer[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			// io.EOF is the client's half-close; anything else ends the connection too.
			return
		}
	}
}

// removeStaleSocket removes a socket file left by an earlier run, and nothing else.
func removeStaleSocket(path string) error {
	if len(path) > 0 && path[0] == '@' {
		return nil // an abstract name has no file
	}
	info, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if info.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	return os.Remove(path)
}

func main() {
	path := "./echo_go.sock"
	if len(os.Args) > 1 {
		path = os.Args[1]
	}
	if err := removeStaleSocket(path); err != nil {
		fmt.Fprintln(os.Stderr, "echo-go:", err)
		os.Exit(1)
	}
	listener, err := net.Listen("unix", path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo-go:", err)
		os.Exit(1)
	}
	// Closing the listener removes the socket file it created.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-signals
		listener.Close()
	}()
	fmt.Fprintln(os.Stderr, "listening on", path)
	for {
		conn, err := listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			fmt.Fprintln(os.Stderr, "echo-go: accept:", err)
			time.Sleep(10 * time.Millisecond) // out of descriptors, say: do not spin
			continue
		}
		go echo(conn)
	}
}
