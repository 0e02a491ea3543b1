/* Ring receiver: waits for the ring NAME, receives until the sender
 * closes, checks the messages of ./ring_send, and removes the ring.
 *
 *   ./ring_recv [NAME [COUNT]]
 */
#include <shmkit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "example-ring";
    long count = argc > 2 ? atol(argv[2]) : 1000;
    shmkit_ring_receiver *rx;
    int rc;
    /* The sender creates the ring: retry for up to 10 s. */
    for (int i = 0; (rc = shmkit_ring_receiver_open(name, &rx)) == SHMKIT_ENOENT && i < 1000; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (rc != SHMKIT_OK) {
        fprintf(stderr, "ring_recv: open: %s\n", shmkit_last_error());
        return 1;
    }
    /* Start small on purpose: SHMKIT_EBUFFER says how much is needed. */
    size_t cap = 4, len = 0;
    char *buf = malloc(cap + 1);
    long got = 0;
    int ok = 1;
    for (;;) {
        rc = shmkit_ring_recv(rx, buf, cap, &len, SHMKIT_FOREVER);
        if (rc == SHMKIT_EBUFFER) {
            cap = len;
            buf = realloc(buf, cap + 1);
            continue; /* the message was kept for the next call */
        }
        if (rc == SHMKIT_EDISCONNECTED) break;
        if (rc != SHMKIT_OK) {
            fprintf(stderr, "ring_recv: recv: %s\n", shmkit_last_error());
            ok = 0;
            break;
        }
        char want[64];
        snprintf(want, sizeof want, "message %ld\n", got);
        buf[len] = 0;
        if (strcmp(buf, want) != 0) {
            fprintf(stderr, "ring_recv: got %s, expected %s", buf, want);
            ok = 0;
        }
        got++;
    }
    free(buf);
    shmkit_ring_receiver_close(rx);
    shmkit_segment_remove(name);
    printf("ring_recv: %ld messages\n", got);
    return ok && got == count ? 0 : 1;
}
