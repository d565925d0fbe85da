import ArgumentParser
import Foundation
import Logging

/// `--log-level`: the least severe event the log shows. Without the option
/// there is no log (and no cost); errors keep their one-line form either way.
enum LogLevelOption: String, ExpressibleByArgument, CaseIterable, Sendable {
    case trace, debug, info, notice, warning, error, critical

    var level: Logger.Level {
        switch self {
        case .trace: .trace
        case .debug: .debug
        case .info: .info
        case .notice: .notice
        case .warning: .warning
        case .error: .error
        case .critical: .critical
        }
    }

    static let help = ArgumentHelp(
        "Log events at this level and above to standard error: trace, debug, info (shutdown, activation), notice (refused peers), warning (accept back-off), error or critical. Default: no log.",
        valueName: "level")

    /// A logger that writes to standard error, or `nil` for no log.
    static func logger(_ option: LogLevelOption?) -> Logger? {
        guard let option else { return nil }
        var logger = Logger(label: "uds") { _ in StandardErrorLogHandler() }
        logger.logLevel = option.level
        return logger
    }
}

/// One line per event on standard error, in the CLI's own form:
/// `uds: notice: refused a connection: … peer.gid=1000 peer.pid=42 peer.uid=1000`,
/// metadata sorted by key, so lines are easy to grep and to compare.
struct StandardErrorLogHandler: LogHandler {
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var line = "uds: \(event.level): \(event.message)"
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            line += " \(key)=\(Self.quoted("\(value)"))"
        }
        Console.standardError.line(line)
    }

    /// A value with spaces or quotes is quoted, so each `key=value` stays one word.
    private static func quoted(_ value: String) -> String {
        guard value.isEmpty || value.contains(where: { $0 == " " || $0 == "\"" || $0 == "\n" }) else { return value }
        let escaped = value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
        return "\"\(escaped)\""
    }
}
