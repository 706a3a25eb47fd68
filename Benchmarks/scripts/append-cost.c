/*
 * The kernel's cost of appending one small record to one of N files, round-robin, the way
 * tenantd's `database` strategy appends a POST to its tenant's log when every POST of a loop
 * turn goes to another tenant (`tenant-bench --spread`). A thread syncs the file system once a
 * second meanwhile, as `--fsync everysec` does.
 *
 * Each way of appending is timed in CPU (user + system, the syncing thread included) per
 * append:
 *   write      write(2) at the end of the file (what tenantd does)
 *   pwrite     pwrite(2) into a file preallocated with fallocate(2) (its size does not change)
 *   mmap       a store into a MAP_SHARED mapping of a sparse file (ftruncate)
 *   mmap-alloc a store into a MAP_SHARED mapping of a preallocated file (fallocate)
 *
 *     cc -O2 -o /tmp/append-cost Benchmarks/scripts/append-cost.c -lpthread
 *     /tmp/append-cost DIRECTORY [RECORDS-PER-FILE] [RECORD-BYTES]
 *
 * DIRECTORY must be on the file system under test (it is emptied of the files it makes).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

enum { SEGMENT = 1 << 20 };

static atomic_int stopping;
static int sync_fd = -1;

static void *syncer(void *unused) {
    (void)unused;
    while (!atomic_load(&stopping)) {
        for (int tenth = 0; tenth < 10 && !atomic_load(&stopping); tenth++) usleep(100000);
        syncfs(sync_fd);
    }
    return NULL;
}

static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_utime.tv_usec * 1e-6 + usage.ru_stime.tv_sec +
           usage.ru_stime.tv_usec * 1e-6;
}

static double run(const char *directory, const char *mode, int files, long per_file, int bytes) {
    int *fds = calloc(files, sizeof(int));
    char **maps = calloc(files, sizeof(char *));
    long *offsets = calloc(files, sizeof(long));
    char record[4096];
    char path[4096];
    memset(record, 'x', sizeof(record));
    // A preallocated or mapped file holds one segment: its appends stop there.
    if (strcmp(mode, "write") != 0 && per_file * bytes > SEGMENT) per_file = SEGMENT / bytes;
    for (int i = 0; i < files; i++) {
        snprintf(path, sizeof(path), "%s/append-cost-%d", directory, i);
        fds[i] = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        if (fds[i] < 0) { perror(path); exit(1); }
        if (strcmp(mode, "pwrite") == 0 || strcmp(mode, "mmap-alloc") == 0) {
            if (fallocate(fds[i], 0, 0, SEGMENT) != 0) { perror("fallocate"); exit(1); }
        } else if (strcmp(mode, "mmap") == 0) {
            if (ftruncate(fds[i], SEGMENT) != 0) { perror("ftruncate"); exit(1); }
        }
        if (strncmp(mode, "mmap", 4) == 0) {
            maps[i] = mmap(NULL, SEGMENT, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], 0);
            if (maps[i] == MAP_FAILED) { perror("mmap"); exit(1); }
        }
    }
    sync_fd = fds[0];
    syncfs(sync_fd);
    atomic_store(&stopping, 0);
    pthread_t thread;
    pthread_create(&thread, NULL, syncer, NULL);
    double start = cpu_seconds();
    long total = per_file * files;
    for (long k = 0; k < total; k++) {
        int i = (int)(k % files);
        if (strcmp(mode, "write") == 0) {
            if (write(fds[i], record, bytes) != bytes) { perror("write"); exit(1); }
        } else if (strcmp(mode, "pwrite") == 0) {
            if (pwrite(fds[i], record, bytes, offsets[i]) != bytes) { perror("pwrite"); exit(1); }
        } else {
            memcpy(maps[i] + offsets[i], record, bytes);
        }
        offsets[i] += bytes;
    }
    double spent = cpu_seconds() - start;
    atomic_store(&stopping, 1);
    pthread_join(thread, NULL);
    for (int i = 0; i < files; i++) {
        if (maps[i]) munmap(maps[i], SEGMENT);
        close(fds[i]);
        snprintf(path, sizeof(path), "%s/append-cost-%d", directory, i);
        unlink(path);
    }
    free(fds);
    free(maps);
    free(offsets);
    return spent * 1e6 / total;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIRECTORY [RECORDS-PER-FILE] [RECORD-BYTES]\n", argv[0]);
        return 2;
    }
    long per_file = argc > 2 ? atol(argv[2]) : 100;
    int bytes = argc > 3 ? atoi(argv[3]) : 120;
    if (per_file < 1 || bytes < 1 || bytes > 4096) { fprintf(stderr, "bad numbers\n"); return 2; }
    const char *modes[] = {"write", "pwrite", "mmap", "mmap-alloc"};
    printf("{\"record_bytes\": %d, \"records_per_file\": %ld, \"us_cpu_per_append\": {", bytes, per_file);
    for (int m = 0; m < 4; m++) {
        // As many appends to one file as to the 10,000 (as many as a segment holds).
        double one = run(argv[1], modes[m], 1, per_file * 10000, bytes);
        double many = run(argv[1], modes[m], 10000, per_file, bytes);
        printf("%s\"%s\": {\"1_file\": %.3f, \"10000_files\": %.3f}", m ? ", " : "", modes[m], one, many);
        fflush(stdout);
    }
    printf("}}\n");
    return 0;
}
