/* Ring sender: creates the ring NAME and sends COUNT text messages, then
 * closes it (the receiver sees SHMKIT_EDISCONNECTED after the last one).
 * The receiver can be ./ring_recv or the CLI: shmkit recv NAME
 *
 *   ./ring_send [NAME [COUNT]]
 */
#include <shmkit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "example-ring";
    long count = argc > 2 ? atol(argv[2]) : 1000;
    shmkit_ring_sender *tx;
    if (shmkit_ring_sender_create(name, 64, 256, &tx) != SHMKIT_OK) {
        fprintf(stderr, "ring_send: create: %s\n", shmkit_last_error());
        return 1;
    }
    char msg[256];
    for (long i = 0; i < count; i++) {
        int n = snprintf(msg, sizeof msg, "message %ld\n", i);
        /* Waits up to 10 s for room (the receiver may start later). */
        int rc = shmkit_ring_send_timeout(tx, msg, (size_t)n, 10ull * 1000 * 1000 * 1000);
        if (rc != SHMKIT_OK) {
            fprintf(stderr, "ring_send: send: %s\n", shmkit_last_error());
            shmkit_ring_sender_close(tx);
            return 1;
        }
    }
    shmkit_ring_sender_close(tx);
    return 0;
}
