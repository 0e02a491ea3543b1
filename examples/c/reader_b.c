/* Reader B: attaches to writer A's segment, verifies every pixel, marks the
 * segment for removal and detaches: the segment is then gone.
 *
 *   ./reader_b [NAME]        (default name: example-image)
 */
#include <shmkit.h>
#include <stdint.h>
#include <stdio.h>

#define WIDTH 1920
#define HEIGHT 1080
#define SIZE ((size_t)WIDTH * HEIGHT * 4)

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "example-image";
    shmkit_segment *seg;
    if (shmkit_segment_open(name, &seg) != SHMKIT_OK) {
        fprintf(stderr, "reader_b: open: %s\n", shmkit_last_error());
        return 1;
    }
    if (shmkit_segment_len(seg) != SIZE) {
        fprintf(stderr, "reader_b: size %zu, expected %zu\n", shmkit_segment_len(seg), SIZE);
        shmkit_segment_close(seg);
        return 1;
    }
    const uint8_t *pixels = shmkit_segment_ptr(seg);
    size_t bad = 0;
    for (size_t y = 0; y < HEIGHT; y++) {
        for (size_t x = 0; x < WIDTH; x++) {
            const uint8_t *p = pixels + 4 * (y * WIDTH + x);
            if (p[0] != (uint8_t)x || p[1] != (uint8_t)y || p[2] != (uint8_t)(x ^ y) || p[3] != 255)
                bad++;
        }
    }
    /* Like IPC_RMID: gone as soon as nobody is attached (after our detach). */
    int removed_now = 0;
    if (shmkit_segment_remove_when_unused(name, &removed_now) != SHMKIT_OK) {
        fprintf(stderr, "reader_b: remove: %s\n", shmkit_last_error());
        return 1;
    }
    int removed = 0;
    if (shmkit_segment_detach(seg, &removed) != SHMKIT_OK) {
        fprintf(stderr, "reader_b: detach: %s\n", shmkit_last_error());
        return 1;
    }
    if (bad != 0) {
        fprintf(stderr, "reader_b: %zu pixels differ\n", bad);
        return 1;
    }
    printf("reader_b: verified %zu bytes; segment %s\n", SIZE,
           removed ? "removed" : "still attached elsewhere");
    return 0;
}
