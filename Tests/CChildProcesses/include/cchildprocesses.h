#ifndef CCHILDPROCESSES_H
#define CCHILDPROCESSES_H

#include <spawn.h>

// The GNU extensions the tests' child processes need, which Swift's Glibc
// module does not show.
int ccp_pipe_close_on_exec(int ends[2]);
int ccp_spawn_add_chdir(posix_spawn_file_actions_t *actions, const char *path);
int ccp_spawn_add_close_from(posix_spawn_file_actions_t *actions, int from);

#endif
