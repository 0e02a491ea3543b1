/* The C side of the cross-language tests (crates/shmkit-c/tests/c_api.rs):
 *
 *   peer sub NAME COUNT   join pub/sub NAME, print "joined", receive COUNT
 *                         messages (message i: 100 + i bytes, byte j =
 *                         (i + j) & 0xff), verify each, print "ok COUNT"
 *   peer hold NAME        open mutex NAME, lock it, print "locked", sleep
 *                         (the test kills it with SIGKILL)
 */
#include <shmkit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "sub") == 0) {
        long count = atol(argv[3]);
        shmkit_subscriber *s;
        if (shmkit_sub_open(argv[2], &s) != SHMKIT_OK) {
            fprintf(stderr, "peer: sub_open: %s\n", shmkit_last_error());
            return 1;
        }
        printf("joined\n");
        fflush(stdout);
        for (long i = 0; i < count; i++) {
            shmkit_sample m;
            if (shmkit_sub_recv(s, 10000000000ull, &m) != SHMKIT_OK) {
                fprintf(stderr, "peer: recv %ld: %s\n", i, shmkit_last_error());
                return 1;
            }
            if (m.len != (size_t)(100 + i)) {
                fprintf(stderr, "peer: message %ld has %zu bytes\n", i, m.len);
                return 1;
            }
            for (size_t j = 0; j < m.len; j++) {
                if (m.data[j] != (uint8_t)((i + j) & 0xff)) {
                    fprintf(stderr, "peer: message %ld byte %zu differs\n", i, j);
                    return 1;
                }
            }
            if (shmkit_sub_release(s, &m) != SHMKIT_OK) return 1;
        }
        shmkit_sample m;
        int rc = shmkit_sub_recv(s, 10000000000ull, &m);
        if (rc != SHMKIT_EDISCONNECTED) {
            fprintf(stderr, "peer: after the last message: %d %s\n", rc, shmkit_last_error());
            return 1;
        }
        shmkit_sub_close(s);
        printf("ok %ld\n", count);
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "hold") == 0) {
        shmkit_mutex *m;
        if (shmkit_mutex_open(argv[2], &m) != SHMKIT_OK || shmkit_mutex_lock(m) != SHMKIT_OK) {
            fprintf(stderr, "peer: lock: %s\n", shmkit_last_error());
            return 1;
        }
        printf("locked\n");
        fflush(stdout);
        for (;;) pause();
    }
    fprintf(stderr, "usage: peer sub NAME COUNT | peer hold NAME\n");
    return 2;
}
