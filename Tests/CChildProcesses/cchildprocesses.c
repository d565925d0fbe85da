#define _GNU_SOURCE
#include "cchildprocesses.h"

#include <fcntl.h>
#include <unistd.h>

int ccp_pipe_close_on_exec(int ends[2]) { return pipe2(ends, O_CLOEXEC); }

int ccp_spawn_add_chdir(posix_spawn_file_actions_t *actions, const char *path) {
    return posix_spawn_file_actions_addchdir_np(actions, path);
}

int ccp_spawn_add_close_from(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}
