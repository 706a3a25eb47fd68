#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <sched.h>
#include <fcntl.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>
#include "cposix.h"

int cposix_syncfs(int fd) {
#ifdef __linux__
    return syncfs(fd);
#else
    (void)fd;
    errno = ENOSYS;
    return -1;
#endif
}

int cposix_usable_cpus(void) {
#ifdef __linux__
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int count = CPU_COUNT(&set);
        if (count > 0) return count;
    }
#endif
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    return online > 0 ? (int)online : 1;
}

int cposix_listen(const char *host, int port, int backlog, int *bound_port) {
    if (port < 0 || port > 65535) {
        errno = EINVAL;
        return -1;
    }
    char service[8];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    struct addrinfo *found = NULL;
    if (getaddrinfo(host, service, &hints, &found) != 0 || found == NULL) {
        errno = EADDRNOTAVAIL;
        return -1;
    }
    int saved = EADDRNOTAVAIL;
    int fd = -1;
    for (struct addrinfo *address = found; address != NULL; address = address->ai_next) {
        fd = socket(address->ai_family, address->ai_socktype | SOCK_CLOEXEC, address->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0
            && bind(fd, address->ai_addr, address->ai_addrlen) == 0 && listen(fd, backlog) == 0) {
            break;
        }
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(found);
    if (fd < 0) {
        errno = saved;
        return -1;
    }
    struct sockaddr_storage local;
    socklen_t length = sizeof(local);
    if (getsockname(fd, (struct sockaddr *)&local, &length) != 0) {
        saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    if (local.ss_family == AF_INET6) {
        *bound_port = ntohs(((struct sockaddr_in6 *)&local)->sin6_port);
    } else {
        *bound_port = ntohs(((struct sockaddr_in *)&local)->sin_port);
    }
    return fd;
}

int cposix_accept(int fd) {
    for (;;) {
#ifdef __linux__
        int accepted = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
#else
        int accepted = accept(fd, NULL, NULL);
        if (accepted >= 0) fcntl(accepted, F_SETFD, FD_CLOEXEC);
#endif
        if (accepted >= 0 || errno != EINTR) return accepted;
    }
}

int cposix_dup(int fd) {
    return fcntl(fd, F_DUPFD_CLOEXEC, 0);
}

int cposix_pipe(int ends[2]) {
    return pipe2(ends, O_NONBLOCK | O_CLOEXEC);
}
