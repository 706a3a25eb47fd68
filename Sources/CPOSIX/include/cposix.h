#ifndef CPOSIX_H
#define CPOSIX_H

/// syncfs(2) where the system has it (Linux): commits every file system buffer of the file system
/// holding `fd`. Elsewhere it fails with ENOSYS.
int cposix_syncfs(int fd);

#endif
