/* A counter in a shared segment, protected by a robust shmkit mutex, and
 * incremented by PROCS processes ITERS times each. With --crash, one more
 * process is SIGKILLed while holding the lock: the next locker gets
 * SHMKIT_EOWNERDEAD, repairs, calls shmkit_mutex_consistent and goes on.
 *
 *   ./counter [NAME [PROCS [ITERS]]] [--crash]
 */
#include <shmkit.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char seg_name[200], lock_name[200];

/* Takes the lock; repairs after an owner death. Returns 0 or -1. */
static int lock(shmkit_mutex *m, int *repairs) {
    int rc = shmkit_mutex_lock(m);
    if (rc == SHMKIT_EOWNERDEAD) {
        /* The counter is a single aligned word, so it is consistent
         * whatever instant the owner died at: nothing to repair but say so. */
        (*repairs)++;
        rc = shmkit_mutex_consistent(m);
    }
    if (rc != SHMKIT_OK) fprintf(stderr, "counter: lock: %s\n", shmkit_last_error());
    return rc == SHMKIT_OK ? 0 : -1;
}

static int worker(long iters, int crash) {
    shmkit_mutex *m;
    shmkit_segment *seg;
    if (shmkit_mutex_open(lock_name, &m) != SHMKIT_OK ||
        shmkit_segment_open(seg_name, &seg) != SHMKIT_OK) {
        fprintf(stderr, "counter: open: %s\n", shmkit_last_error());
        return 1;
    }
    volatile uint64_t *count = shmkit_segment_ptr(seg);
    int repairs = 0;
    if (crash) {
        if (lock(m, &repairs) != 0) return 1;
        raise(SIGKILL); /* dies holding the lock */
    }
    for (long i = 0; i < iters; i++) {
        if (lock(m, &repairs) != 0) return 1;
        *count = *count + 1;
        if (shmkit_mutex_unlock(m) != SHMKIT_OK) return 1;
    }
    shmkit_mutex_close(m);
    shmkit_segment_close(seg);
    /* Exit status: how many owner deaths this process repaired. */
    return 100 + repairs;
}

int main(int argc, char **argv) {
    const char *name = "example-counter";
    long procs = 4, iters = 10000;
    int crash = 0, pos = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--crash") == 0) crash = 1;
        else if (pos == 0) { name = argv[i]; pos++; }
        else if (pos == 1) { procs = atol(argv[i]); pos++; }
        else { iters = atol(argv[i]); pos++; }
    }
    snprintf(seg_name, sizeof seg_name, "%s", name);
    snprintf(lock_name, sizeof lock_name, "%s.lock", name);

    shmkit_mutex *m;
    shmkit_segment *seg;
    if (shmkit_mutex_create(lock_name, &m) != SHMKIT_OK ||
        shmkit_segment_create(seg_name, sizeof(uint64_t), 0600, SHMKIT_PERSISTENT, &seg) != SHMKIT_OK) {
        fprintf(stderr, "counter: create: %s\n", shmkit_last_error());
        shmkit_segment_remove(lock_name);
        return 1;
    }
    int ok = 1, repairs = 0;
    if (crash) {
        pid_t p = fork();
        if (p == 0) _exit(worker(0, 1));
        int st;
        waitpid(p, &st, 0);
        if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL) ok = 0;
    }
    for (long i = 0; i < procs; i++) {
        if (fork() == 0) _exit(worker(iters, 0));
    }
    for (long i = 0; i < procs; i++) {
        int st;
        wait(&st);
        if (!WIFEXITED(st) || WEXITSTATUS(st) < 100) ok = 0;
        else repairs += WEXITSTATUS(st) - 100;
    }
    uint64_t total = *(volatile uint64_t *)shmkit_segment_ptr(seg);
    uint64_t want = (uint64_t)procs * (uint64_t)iters;
    printf("counter: %llu (expected %llu), %d owner death(s) repaired\n",
           (unsigned long long)total, (unsigned long long)want, repairs);
    if (total != want || repairs != crash) ok = 0;
    shmkit_mutex_close(m);
    shmkit_segment_close(seg);
    shmkit_segment_remove(lock_name);
    shmkit_segment_remove(seg_name);
    return ok ? 0 : 1;
}
