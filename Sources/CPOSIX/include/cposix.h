#ifndef CPOSIX_H
#define CPOSIX_H

/// syncfs(2) where the system has it (Linux): commits every file system buffer of the file system
/// holding `fd`. Elsewhere it fails with ENOSYS.
int cposix_syncfs(int fd);

/// The CPUs this process may run on (its affinity mask, so `taskset -c 0` gives 1), at least 1.
int cposix_usable_cpus(void);

#endif
