/* Writer A: creates a segment, writes an image-sized buffer (1920x1080
 * RGBA), and detaches. The segment persists until reader B removes it.
 *
 *   ./writer_a [NAME]        (default name: example-image)
 */
#include <shmkit.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define WIDTH 1920
#define HEIGHT 1080
#define SIZE ((size_t)WIDTH * HEIGHT * 4)

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "example-image";
    shmkit_segment *seg;
    int rc = shmkit_segment_create(name, SIZE, 0600, SHMKIT_PERSISTENT, &seg);
    if (rc != SHMKIT_OK) {
        fprintf(stderr, "writer_a: create: %s\n", shmkit_last_error());
        return 1;
    }
    uint8_t *pixels = shmkit_segment_ptr(seg);
    /* A gradient the reader can verify: pixel (x, y) = (x, y, x ^ y, 255). */
    for (size_t y = 0; y < HEIGHT; y++) {
        for (size_t x = 0; x < WIDTH; x++) {
            uint8_t *p = pixels + 4 * (y * WIDTH + x);
            p[0] = (uint8_t)x;
            p[1] = (uint8_t)y;
            p[2] = (uint8_t)(x ^ y);
            p[3] = 255;
        }
    }
    rc = shmkit_segment_detach(seg, NULL);
    if (rc != SHMKIT_OK) {
        fprintf(stderr, "writer_a: detach: %s\n", shmkit_last_error());
        return 1;
    }
    printf("writer_a: wrote %zu bytes to %s\n", SIZE, name);
    return 0;
}
