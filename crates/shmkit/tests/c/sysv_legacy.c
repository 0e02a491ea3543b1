/* A legacy System V shared memory program, as the tests' counterpart:
 *
 *   sysv_legacy write KEY SIZE SEED   create (IPC_EXCL), fill, detach; print shmid
 *   sysv_legacy check KEY SIZE SEED   attach read-only, verify every byte
 *   sysv_legacy hold KEY              attach, print "attached", wait for EOF on stdin
 *
 * Byte i of the pattern is (i * 31 + SEED) & 0xff. KEY is decimal or 0x hex.
 * Exit status: 0 ok, 2 usage, 3 system call failed, 4 data mismatch.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>

static unsigned char pattern(size_t i, unsigned seed) {
    return (unsigned char)((i * 31u + seed) & 0xffu);
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    key_t key = (key_t)strtoll(argv[2], NULL, 0);
    if (strcmp(argv[1], "write") == 0 && argc == 5) {
        size_t size = strtoull(argv[3], NULL, 0);
        unsigned seed = (unsigned)strtoul(argv[4], NULL, 0);
        int id = shmget(key, size, IPC_CREAT | IPC_EXCL | 0600);
        if (id < 0) { perror("shmget"); return 3; }
        unsigned char *p = shmat(id, NULL, 0);
        if (p == (void *)-1) { perror("shmat"); shmctl(id, IPC_RMID, NULL); return 3; }
        for (size_t i = 0; i < size; i++) p[i] = pattern(i, seed);
        if (shmdt(p) != 0) { perror("shmdt"); return 3; }
        printf("%d\n", id);
        return 0;
    }
    if (strcmp(argv[1], "check") == 0 && argc == 5) {
        size_t size = strtoull(argv[3], NULL, 0);
        unsigned seed = (unsigned)strtoul(argv[4], NULL, 0);
        int id = shmget(key, 0, 0);
        if (id < 0) { perror("shmget"); return 3; }
        struct shmid_ds ds;
        if (shmctl(id, IPC_STAT, &ds) != 0) { perror("shmctl"); return 3; }
        if (ds.shm_segsz != size) { fprintf(stderr, "size %zu\n", (size_t)ds.shm_segsz); return 4; }
        const unsigned char *p = shmat(id, NULL, SHM_RDONLY);
        if (p == (void *)-1) { perror("shmat"); return 3; }
        for (size_t i = 0; i < size; i++) {
            if (p[i] != pattern(i, seed)) {
                fprintf(stderr, "byte %zu: %u, expected %u\n", i, p[i], pattern(i, seed));
                shmdt(p);
                return 4;
            }
        }
        shmdt(p);
        return 0;
    }
    if (strcmp(argv[1], "hold") == 0) {
        int id = shmget(key, 0, 0);
        if (id < 0) { perror("shmget"); return 3; }
        void *p = shmat(id, NULL, 0);
        if (p == (void *)-1) { perror("shmat"); return 3; }
        printf("attached\n");
        fflush(stdout);
        while (getchar() != EOF) {}
        shmdt(p);
        return 0;
    }
    return 2;
}
