#ifndef CPOSIX_H
#define CPOSIX_H

/// syncfs(2) where the system has it (Linux): commits every file system buffer of the file system
/// holding `fd`. Elsewhere it fails with ENOSYS.
int cposix_syncfs(int fd);

/// The CPUs this process may run on (its affinity mask, so `taskset -c 0` gives 1), at least 1.
int cposix_usable_cpus(void);

/// A TCP socket listening on `host`:`port` (the first of the host's addresses that binds; port 0
/// takes any free one), with SO_REUSEADDR and close-on-exec, its port in `*bound_port`.
/// Returns the descriptor, or -1 with errno set (EAI_* failures of the name: EADDRNOTAVAIL).
int cposix_listen(const char *host, int port, int backlog, int *bound_port);

/// accept4(2) with close-on-exec, retried on EINTR: the new socket, or -1 with errno set.
int cposix_accept(int fd);

/// A second descriptor of `fd`'s open file, close-on-exec: -1 with errno set when it fails.
int cposix_dup(int fd);

/// pipe2(2) with both ends non-blocking and close-on-exec: 0, or -1 with errno set.
int cposix_pipe(int ends[2]);

#endif
