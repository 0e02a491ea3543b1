/* Exercises every function of shmkit.h, success and failure paths, in one
 * process (plus forked children and threads where the behaviour needs
 * them). Run by crates/shmkit-c/tests/c_api.rs, also under
 * AddressSanitizer and valgrind. Prints "api_test: N checks passed". */
#include <shmkit.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int checks, failures;
#define CHECK(cond)                                                                  \
    do {                                                                             \
        checks++;                                                                    \
        if (!(cond)) {                                                               \
            failures++;                                                              \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, \
                    __LINE__, #cond, shmkit_last_error());                           \
        }                                                                            \
    } while (0)
#define EQ(expr, want) CHECK((expr) == (want))

#define MS 1000000ull
static char prefix[64];
static const char *nm(const char *what) {
    static char buf[8][128];
    static int i;
    i = (i + 1) % 8;
    snprintf(buf[i], sizeof buf[i], "%s-%s", prefix, what);
    return buf[i];
}

static void test_general(void) {
    EQ(strcmp(shmkit_version(), SHMKIT_VERSION), 0);
    char v[32];
    snprintf(v, sizeof v, "%d.%d.%d", SHMKIT_VERSION_MAJOR, SHMKIT_VERSION_MINOR, SHMKIT_VERSION_PATCH);
    EQ(strcmp(v, SHMKIT_VERSION), 0);
    CHECK(shmkit_last_error() != NULL);
    for (int s = SHMKIT_OK; s >= SHMKIT_EPANIC; s--) {
        CHECK(strlen(shmkit_strerror(s)) > 0);
        CHECK(strcmp(shmkit_strerror(s), "unknown status") != 0);
    }
    EQ(strcmp(shmkit_strerror(SHMKIT_ETIMEDOUT), "timed out"), 0);
    EQ(strcmp(shmkit_strerror(12345), "unknown status"), 0);
}

static void test_segments(void) {
    shmkit_segment *a = (shmkit_segment *)1, *b, *c;
    int created = -1, removed = -1;
    size_t n = 0;
    EQ(shmkit_segment_create(NULL, 10, 0600, SHMKIT_PERSISTENT, &a), SHMKIT_EINVAL);
    CHECK(a == NULL); /* out cleared on failure */
    EQ(shmkit_segment_create(nm("seg"), 10, 0600, SHMKIT_PERSISTENT, NULL), SHMKIT_EINVAL);
    EQ(shmkit_segment_create("bad/name", 10, 0600, SHMKIT_PERSISTENT, &a), SHMKIT_EINVAL);
    CHECK(strstr(shmkit_last_error(), "bad/name") != NULL);
    EQ(shmkit_segment_create(nm("seg"), 0, 0600, SHMKIT_PERSISTENT, &a), SHMKIT_EINVAL);
    EQ(shmkit_segment_create(nm("seg"), 10, 0600, 7, &a), SHMKIT_EINVAL);
    EQ(shmkit_segment_open(nm("seg"), &a), SHMKIT_ENOENT);

    EQ(shmkit_segment_create(nm("seg"), 4096, 0600, SHMKIT_PERSISTENT, &a), SHMKIT_OK);
    EQ(shmkit_segment_create(nm("seg"), 4096, 0600, SHMKIT_PERSISTENT, &b), SHMKIT_EEXIST);
    EQ(shmkit_segment_len(a), 4096);
    EQ(shmkit_segment_lifetime(a), SHMKIT_PERSISTENT);
    memcpy(shmkit_segment_ptr(a), "hello", 5);
    EQ(shmkit_segment_open(nm("seg"), &b), SHMKIT_OK);
    EQ(memcmp(shmkit_segment_ptr(b), "hello", 5), 0);
    EQ(shmkit_segment_attached(a, &n), SHMKIT_OK);
    EQ(n, 1); /* one process, however many handles */
    EQ(shmkit_segment_attached(a, NULL), SHMKIT_EINVAL);
    EQ(shmkit_segment_open_or_create(nm("seg"), 4096, 0600, SHMKIT_PERSISTENT, &c, &created), SHMKIT_OK);
    EQ(created, 0);
    EQ(shmkit_segment_close(c), SHMKIT_OK);
    EQ(shmkit_segment_open_or_create(nm("seg"), 8192, 0600, SHMKIT_PERSISTENT, &c, NULL), SHMKIT_EINVAL);
    EQ(shmkit_segment_detach(b, &removed), SHMKIT_OK);
    EQ(removed, 0);
    EQ(shmkit_segment_close(a), SHMKIT_OK);
    /* Closed handles: errors, not crashes. */
    EQ(shmkit_segment_close(a), SHMKIT_EBADHANDLE);
    CHECK(shmkit_segment_ptr(a) == NULL);
    EQ(shmkit_segment_len(a), 0);
    EQ(shmkit_segment_lifetime(a), SHMKIT_EBADHANDLE);
    EQ(shmkit_segment_attached(a, &n), SHMKIT_EBADHANDLE);
    EQ(shmkit_segment_detach(NULL, NULL), SHMKIT_EINVAL);
    EQ(shmkit_segment_lifetime(NULL), SHMKIT_EINVAL);
    EQ(shmkit_segment_remove(nm("seg")), SHMKIT_OK);
    EQ(shmkit_segment_remove(nm("seg")), SHMKIT_ENOENT);
    EQ(shmkit_segment_remove(NULL), SHMKIT_EINVAL);

    /* Until last detach: the last detach deletes it. */
    EQ(shmkit_segment_open_or_create(nm("tmp"), 100, 0600, SHMKIT_UNTIL_LAST_DETACH, &a, &created), SHMKIT_OK);
    EQ(created, 1);
    EQ(shmkit_segment_lifetime(a), SHMKIT_UNTIL_LAST_DETACH);
    EQ(shmkit_segment_open(nm("tmp"), &b), SHMKIT_OK);
    EQ(shmkit_segment_detach(b, &removed), SHMKIT_OK);
    EQ(removed, 0);
    EQ(shmkit_segment_detach(a, &removed), SHMKIT_OK);
    EQ(removed, 1);
    EQ(shmkit_segment_open(nm("tmp"), &a), SHMKIT_ENOENT);

    /* Remove when unused: new opens refused, gone at the last detach. */
    EQ(shmkit_segment_create(nm("rwu"), 100, 0600, SHMKIT_PERSISTENT, &a), SHMKIT_OK);
    EQ(shmkit_segment_remove_when_unused(nm("rwu"), &removed), SHMKIT_OK);
    EQ(removed, 0);
    EQ(shmkit_segment_open(nm("rwu"), &b), SHMKIT_EREMOVED);
    EQ(shmkit_segment_detach(a, &removed), SHMKIT_OK);
    EQ(removed, 1);
    EQ(shmkit_segment_create(nm("rwu"), 100, 0600, SHMKIT_PERSISTENT, &a), SHMKIT_OK);
    EQ(shmkit_segment_close(a), SHMKIT_OK);
    EQ(shmkit_segment_remove_when_unused(nm("rwu"), NULL), SHMKIT_OK);
    EQ(shmkit_segment_open(nm("rwu"), &a), SHMKIT_ENOENT);
    EQ(shmkit_segment_remove_when_unused(nm("rwu"), NULL), SHMKIT_ENOENT);
}

struct lockarg {
    shmkit_mutex *m;
    int try_rc, timed_rc, unlock_rc, consistent_rc;
};

static void *other_thread(void *p) {
    struct lockarg *a = p;
    a->try_rc = shmkit_mutex_trylock(a->m);
    a->timed_rc = shmkit_mutex_timedlock(a->m, 50 * MS);
    a->unlock_rc = shmkit_mutex_unlock(a->m);
    a->consistent_rc = shmkit_mutex_consistent(a->m);
    return NULL;
}

struct closearg {
    shmkit_mutex *m;
    pthread_barrier_t *b;
    int lock_rc, unlock_rc, unlock2_rc;
};

/* Locks, lets main close the handle, then unlocks through the closed one. */
static void *unlock_after_close(void *p) {
    struct closearg *a = p;
    a->lock_rc = shmkit_mutex_lock(a->m);
    pthread_barrier_wait(a->b);
    pthread_barrier_wait(a->b);
    a->unlock_rc = shmkit_mutex_unlock(a->m);
    a->unlock2_rc = shmkit_mutex_unlock(a->m);
    return NULL;
}

/* A child that takes the lock and exits without unlocking. */
static void die_holding(const char *name) {
    pid_t p = fork();
    if (p == 0) {
        shmkit_mutex *m;
        if (shmkit_mutex_open(name, &m) != SHMKIT_OK || shmkit_mutex_lock(m) != SHMKIT_OK) _exit(1);
        _exit(0);
    }
    int st;
    waitpid(p, &st, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void test_mutex(void) {
    shmkit_mutex *m, *m2, *m3;
    EQ(shmkit_mutex_open(nm("mx"), &m), SHMKIT_ENOENT);
    EQ(shmkit_mutex_create(nm("mx"), &m), SHMKIT_OK);
    EQ(shmkit_mutex_create(nm("mx"), &m2), SHMKIT_EEXIST);
    EQ(shmkit_mutex_open(nm("mx"), &m2), SHMKIT_OK);
    EQ(shmkit_mutex_open_or_create(nm("mx"), &m3), SHMKIT_OK);
    EQ(shmkit_mutex_close(m3), SHMKIT_OK);

    EQ(shmkit_mutex_unlock(m), SHMKIT_EPERM);
    EQ(shmkit_mutex_consistent(m), SHMKIT_EPERM);
    EQ(shmkit_mutex_lock(m), SHMKIT_OK);
    EQ(shmkit_mutex_lock(m), SHMKIT_EDEADLK);
    EQ(shmkit_mutex_consistent(m), SHMKIT_OK); /* no-op on a normal lock */
    struct lockarg a = {m2, 0, 0, 0, 0};
    pthread_t t;
    pthread_create(&t, NULL, other_thread, &a);
    pthread_join(t, NULL);
    EQ(a.try_rc, SHMKIT_EAGAIN);
    EQ(a.timed_rc, SHMKIT_ETIMEDOUT);
    EQ(a.unlock_rc, SHMKIT_EPERM);
    EQ(a.consistent_rc, SHMKIT_EPERM);
    EQ(shmkit_mutex_unlock(m), SHMKIT_OK);
    EQ(shmkit_mutex_trylock(m2), SHMKIT_OK);
    EQ(shmkit_mutex_unlock(m2), SHMKIT_OK);
    EQ(shmkit_mutex_timedlock(m, SHMKIT_FOREVER), SHMKIT_OK);
    EQ(shmkit_mutex_close(m), SHMKIT_OK); /* closing unlocks */
    EQ(shmkit_mutex_trylock(m2), SHMKIT_OK);
    EQ(shmkit_mutex_unlock(m2), SHMKIT_OK);

    /* Another thread closes the handle while this one holds the lock. */
    EQ(shmkit_mutex_open(nm("mx"), &m3), SHMKIT_OK);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, 2);
    struct closearg ca = {m3, &bar, 1, 1, 1};
    pthread_create(&t, NULL, unlock_after_close, &ca);
    pthread_barrier_wait(&bar);
    EQ(shmkit_mutex_close(m3), SHMKIT_OK);
    EQ(shmkit_mutex_trylock(m2), SHMKIT_EAGAIN);
    pthread_barrier_wait(&bar);
    pthread_join(t, NULL);
    pthread_barrier_destroy(&bar);
    EQ(ca.lock_rc, SHMKIT_OK);
    EQ(ca.unlock_rc, SHMKIT_OK);
    EQ(ca.unlock2_rc, SHMKIT_EBADHANDLE);
    EQ(shmkit_mutex_trylock(m2), SHMKIT_OK);
    EQ(shmkit_mutex_unlock(m2), SHMKIT_OK);

    /* Owner death, repaired. */
    die_holding(nm("mx"));
    EQ(shmkit_mutex_lock(m2), SHMKIT_EOWNERDEAD);
    EQ(shmkit_mutex_consistent(m2), SHMKIT_OK);
    EQ(shmkit_mutex_unlock(m2), SHMKIT_OK);
    EQ(shmkit_mutex_lock(m2), SHMKIT_OK);
    EQ(shmkit_mutex_unlock(m2), SHMKIT_OK);
    /* Owner death, not repaired: unrecoverable for everyone. */
    die_holding(nm("mx"));
    EQ(shmkit_mutex_trylock(m2), SHMKIT_EOWNERDEAD);
    EQ(shmkit_mutex_unlock(m2), SHMKIT_OK);
    EQ(shmkit_mutex_lock(m2), SHMKIT_ENOTRECOVERABLE);
    EQ(shmkit_mutex_close(m2), SHMKIT_OK);

    EQ(shmkit_mutex_lock(m2), SHMKIT_EBADHANDLE);
    EQ(shmkit_mutex_lock(NULL), SHMKIT_EINVAL);
    EQ(shmkit_mutex_lock((shmkit_mutex *)(uintptr_t)0x12345670), SHMKIT_EBADHANDLE);
    EQ(shmkit_mutex_close(m2), SHMKIT_EBADHANDLE);
    EQ(shmkit_segment_remove(nm("mx")), SHMKIT_OK);
}

static void *post_later(void *p) {
    usleep(20000);
    shmkit_sem_post(p);
    return NULL;
}

static void *set_later(void *p) {
    usleep(20000);
    shmkit_event_set(p);
    return NULL;
}

static void test_sem_event(void) {
    shmkit_sem *s, *s2;
    uint32_t v = 99;
    EQ(shmkit_sem_open(nm("sem"), &s), SHMKIT_ENOENT);
    EQ(shmkit_sem_create(nm("sem"), 2, &s), SHMKIT_OK);
    EQ(shmkit_sem_open(nm("sem"), &s2), SHMKIT_OK);
    EQ(shmkit_sem_value(s2, &v), SHMKIT_OK);
    EQ(v, 2);
    EQ(shmkit_sem_value(s2, NULL), SHMKIT_EINVAL);
    EQ(shmkit_sem_wait(s), SHMKIT_OK);
    EQ(shmkit_sem_trywait(s2), SHMKIT_OK);
    EQ(shmkit_sem_trywait(s2), SHMKIT_EAGAIN);
    EQ(shmkit_sem_timedwait(s, 20 * MS), SHMKIT_ETIMEDOUT);
    EQ(shmkit_sem_post(s), SHMKIT_OK);
    EQ(shmkit_sem_value(s, &v), SHMKIT_OK);
    EQ(v, 1);
    EQ(shmkit_sem_timedwait(s, SHMKIT_FOREVER), SHMKIT_OK);
    pthread_t t;
    pthread_create(&t, NULL, post_later, s2);
    EQ(shmkit_sem_timedwait(s, 5000 * MS), SHMKIT_OK); /* woken by the post */
    pthread_join(t, NULL);
    EQ(shmkit_sem_close(s2), SHMKIT_OK);
    EQ(shmkit_sem_open_or_create(nm("sem"), 7, &s2), SHMKIT_OK);
    EQ(shmkit_sem_value(s2, &v), SHMKIT_OK);
    EQ(v, 0); /* existing: the initial value is ignored */
    EQ(shmkit_sem_close(s2), SHMKIT_OK);
    EQ(shmkit_sem_close(s), SHMKIT_OK);
    EQ(shmkit_sem_post(s), SHMKIT_EBADHANDLE);
    EQ(shmkit_sem_wait(NULL), SHMKIT_EINVAL);
    EQ(shmkit_sem_close(s), SHMKIT_EBADHANDLE);
    EQ(shmkit_segment_remove(nm("sem")), SHMKIT_OK);
    /* Wrong kind: a semaphore is not a mutex. */
    EQ(shmkit_sem_create(nm("kind"), 0, &s), SHMKIT_OK);
    shmkit_mutex *m;
    EQ(shmkit_mutex_open(nm("kind"), &m), SHMKIT_EKIND);
    EQ(shmkit_mutex_lock((shmkit_mutex *)s), SHMKIT_EBADHANDLE); /* wrong handle type */
    EQ(shmkit_sem_close(s), SHMKIT_OK);
    EQ(shmkit_segment_remove(nm("kind")), SHMKIT_OK);

    shmkit_event *e, *e2;
    EQ(shmkit_event_create(nm("ev"), 5, &e), SHMKIT_EINVAL);
    EQ(shmkit_event_open(nm("ev"), &e), SHMKIT_ENOENT);
    EQ(shmkit_event_create(nm("ev"), SHMKIT_AUTO_RESET, &e), SHMKIT_OK);
    EQ(shmkit_event_open(nm("ev"), &e2), SHMKIT_OK);
    EQ(shmkit_event_timedwait(e, 0), SHMKIT_EAGAIN);
    EQ(shmkit_event_set(e2), SHMKIT_OK);
    EQ(shmkit_event_timedwait(e, 0), SHMKIT_OK);
    EQ(shmkit_event_timedwait(e, 10 * MS), SHMKIT_ETIMEDOUT); /* auto reset */
    EQ(shmkit_event_set(e2), SHMKIT_OK);
    EQ(shmkit_event_wait(e), SHMKIT_OK);
    pthread_t t2;
    pthread_create(&t2, NULL, set_later, e2);
    EQ(shmkit_event_wait(e), SHMKIT_OK);
    pthread_join(t2, NULL);
    EQ(shmkit_event_close(e2), SHMKIT_OK);
    EQ(shmkit_event_close(e), SHMKIT_OK);
    EQ(shmkit_event_set(e), SHMKIT_EBADHANDLE);
    EQ(shmkit_segment_remove(nm("ev")), SHMKIT_OK);

    EQ(shmkit_event_open_or_create(nm("ev"), SHMKIT_MANUAL_RESET, &e), SHMKIT_OK);
    EQ(shmkit_event_set(e), SHMKIT_OK);
    EQ(shmkit_event_wait(e), SHMKIT_OK);
    EQ(shmkit_event_timedwait(e, SHMKIT_FOREVER), SHMKIT_OK); /* stays set */
    EQ(shmkit_event_reset(e), SHMKIT_OK);
    EQ(shmkit_event_timedwait(e, 10 * MS), SHMKIT_ETIMEDOUT);
    EQ(shmkit_event_reset(NULL), SHMKIT_EINVAL);
    EQ(shmkit_event_close(e), SHMKIT_OK);
    EQ(shmkit_segment_remove(nm("ev")), SHMKIT_OK);
}

struct seen {
    char text[64];
    size_t len;
    int calls;
};

static void on_message(void *user, const uint8_t *data, size_t len) {
    struct seen *s = user;
    s->calls++;
    s->len = len;
    memcpy(s->text, data, len < sizeof s->text ? len : sizeof s->text - 1);
}

static void test_ring(void) {
    shmkit_ring_sender *tx, *tx2;
    shmkit_ring_receiver *rx, *rx2;
    char buf[64];
    size_t len = 0;
    EQ(shmkit_ring_receiver_create(nm("ring"), 4, 32, &rx), SHMKIT_OK);
    EQ(shmkit_ring_sender_open(nm("ring"), &tx), SHMKIT_OK);
    EQ(shmkit_ring_sender_open(nm("ring"), &tx2), SHMKIT_EBUSY); /* role taken */
    EQ(shmkit_ring_receiver_open(nm("ring"), &rx2), SHMKIT_EBUSY);
    EQ(shmkit_ring_recv(rx, buf, sizeof buf, &len, 0), SHMKIT_EAGAIN);
    EQ(shmkit_ring_recv(rx, buf, sizeof buf, &len, 10 * MS), SHMKIT_ETIMEDOUT);
    EQ(shmkit_ring_send(tx, "a longer message", 16), SHMKIT_OK);
    EQ(shmkit_ring_try_send(tx, "b", 1), SHMKIT_OK);
    EQ(shmkit_ring_send_timeout(tx, "c", 1, 10 * MS), SHMKIT_OK);
    EQ(shmkit_ring_try_send(tx, "", 0), SHMKIT_OK);
    EQ(shmkit_ring_try_send(tx, "e", 1), SHMKIT_EAGAIN); /* full */
    EQ(shmkit_ring_send_timeout(tx, "e", 1, 10 * MS), SHMKIT_ETIMEDOUT);
    char big[33] = {0};
    EQ(shmkit_ring_try_send(tx, big, 33), SHMKIT_EMSGSIZE);
    EQ(shmkit_ring_send(tx, NULL, 1), SHMKIT_EINVAL);
    /* Too small a buffer: the needed length, and the message is kept. */
    EQ(shmkit_ring_recv(rx, buf, 4, &len, 0), SHMKIT_EBUFFER);
    EQ(len, 16);
    EQ(shmkit_ring_recv(rx, NULL, 0, &len, 0), SHMKIT_EBUFFER);
    EQ(len, 16);
    EQ(shmkit_ring_recv(rx, NULL, 5, &len, 0), SHMKIT_EINVAL);
    EQ(shmkit_ring_recv(rx, buf, sizeof buf, NULL, 0), SHMKIT_EINVAL);
    EQ(shmkit_ring_recv(rx, buf, sizeof buf, &len, 0), SHMKIT_OK);
    EQ(len, 16);
    EQ(memcmp(buf, "a longer message", 16), 0);
    struct seen s = {{0}, 0, 0};
    EQ(shmkit_ring_recv_with(rx, SHMKIT_FOREVER, on_message, &s), SHMKIT_OK);
    EQ(s.calls, 1);
    EQ(s.len, 1);
    EQ(s.text[0], 'b');
    EQ(shmkit_ring_recv_with(rx, 0, NULL, &s), SHMKIT_EINVAL);
    EQ(shmkit_ring_recv(rx, buf, sizeof buf, &len, SHMKIT_FOREVER), SHMKIT_OK);
    EQ(buf[0], 'c');
    /* A message kept after SHMKIT_EBUFFER also goes to recv_with. */
    EQ(shmkit_ring_send(tx, "kept", 4), SHMKIT_OK);
    EQ(shmkit_ring_recv(rx, buf, sizeof buf, &len, 0), SHMKIT_OK);
    EQ(len, 0); /* the empty message */
    EQ(shmkit_ring_recv(rx, buf, 1, &len, 0), SHMKIT_EBUFFER);
    EQ(shmkit_ring_recv_with(rx, 0, on_message, &s), SHMKIT_OK);
    EQ(s.calls, 2);
    EQ(memcmp(s.text, "kept", 4), 0);
    EQ(shmkit_ring_recv_with(rx, 0, on_message, &s), SHMKIT_EAGAIN);
    /* Sender closes: the receiver is told once the ring is drained. */
    EQ(shmkit_ring_send(tx, "last", 4), SHMKIT_OK);
    EQ(shmkit_ring_sender_close(tx), SHMKIT_OK);
    EQ(shmkit_ring_send(tx, "x", 1), SHMKIT_EBADHANDLE);
    EQ(shmkit_ring_recv(rx, buf, sizeof buf, &len, SHMKIT_FOREVER), SHMKIT_OK);
    EQ(shmkit_ring_recv(rx, buf, sizeof buf, &len, SHMKIT_FOREVER), SHMKIT_EDISCONNECTED);
    EQ(shmkit_ring_receiver_close(rx), SHMKIT_OK);
    EQ(shmkit_ring_receiver_close(rx), SHMKIT_EBADHANDLE);
    EQ(shmkit_segment_remove(nm("ring")), SHMKIT_OK);

    /* The other way round: the sender creates, the receiver leaves. */
    EQ(shmkit_ring_sender_create(nm("ring2"), 0, 8, &tx), SHMKIT_EINVAL); /* no room */
    EQ(shmkit_ring_sender_create(nm("ring2"), 4, 8, &tx), SHMKIT_OK);
    EQ(shmkit_ring_receiver_open(nm("ring2"), &rx), SHMKIT_OK);
    EQ(shmkit_ring_receiver_close(rx), SHMKIT_OK);
    EQ(shmkit_ring_send(tx, "x", 1), SHMKIT_EDISCONNECTED);
    EQ(shmkit_ring_sender_close(tx), SHMKIT_OK);
    EQ(shmkit_ring_recv(NULL, buf, 1, &len, 0), SHMKIT_EINVAL);
    EQ(shmkit_segment_remove(nm("ring2")), SHMKIT_OK);
}

static void test_pubsub(void) {
    shmkit_publisher *p, *p2;
    shmkit_subscriber *s1, *s2, *s3;
    void *data = (void *)1;
    shmkit_sample a, b, c;
    EQ(shmkit_sub_open(nm("ps"), &s1), SHMKIT_ENOENT);
    EQ(shmkit_pub_create(nm("ps"), 4, 64, 2, &p), SHMKIT_OK);
    EQ(shmkit_pub_open(nm("ps"), &p2), SHMKIT_EBUSY);
    EQ(shmkit_sub_open(nm("ps"), &s1), SHMKIT_OK);
    EQ(shmkit_sub_open(nm("ps"), &s2), SHMKIT_OK);
    EQ(shmkit_sub_open(nm("ps"), &s3), SHMKIT_EBUSY); /* 2 subscribers at most */
    EQ(shmkit_sub_recv(s1, 0, &a), SHMKIT_EAGAIN);
    EQ(shmkit_pub_publish(p, 0), SHMKIT_EINVAL); /* no loan */
    EQ(shmkit_pub_loan(p, 65, 0, &data), SHMKIT_EMSGSIZE);
    CHECK(data == NULL);
    EQ(shmkit_pub_loan(p, 64, 0, NULL), SHMKIT_EINVAL);
    EQ(shmkit_pub_loan(p, 64, SHMKIT_FOREVER, &data), SHMKIT_OK);
    CHECK(data != NULL);
    void *other;
    EQ(shmkit_pub_loan(p, 8, 0, &other), SHMKIT_EBUSY); /* one loan at a time */
    memcpy(data, "frame one", 9);
    EQ(shmkit_pub_publish(p, 65), SHMKIT_EINVAL); /* more than loaned */
    EQ(shmkit_pub_publish(p, 9), SHMKIT_OK);
    EQ(shmkit_pub_loan(p, 9, 0, &data), SHMKIT_OK);
    memcpy(data, "frame two", 9);
    EQ(shmkit_pub_publish(p, 9), SHMKIT_OK);

    EQ(shmkit_sub_recv(s1, SHMKIT_FOREVER, &a), SHMKIT_OK);
    EQ(a.len, 9);
    EQ(memcmp(a.data, "frame one", 9), 0);
    EQ(a.missed, 0);
    EQ(shmkit_sub_recv(s1, 10 * MS, &b), SHMKIT_OK); /* several held at once */
    EQ(memcmp(b.data, "frame two", 9), 0);
    CHECK(a.id != b.id);
    EQ(shmkit_sub_recv(s2, 0, &c), SHMKIT_OK);
    EQ(memcmp(c.data, "frame one", 9), 0);
    EQ(shmkit_sub_recv(s1, 0, NULL), SHMKIT_EINVAL);
    EQ(shmkit_sub_release(s1, &a), SHMKIT_OK);
    EQ(shmkit_sub_release(s1, &a), SHMKIT_EINVAL); /* twice */
    EQ(shmkit_sub_release(s2, &b), SHMKIT_EINVAL); /* not s2's */
    EQ(shmkit_sub_release(s1, NULL), SHMKIT_EINVAL);
    EQ(shmkit_sub_release(s1, &b), SHMKIT_OK);
    EQ(shmkit_sub_release(s2, &c), SHMKIT_OK);
    /* s2 still has "frame two" to read; leave with a sample held. */
    EQ(shmkit_sub_recv(s2, 0, &c), SHMKIT_OK);
    EQ(shmkit_sub_close(s2), SHMKIT_OK);
    EQ(shmkit_sub_release(s2, &c), SHMKIT_EBADHANDLE);

    /* A loan closed unpublished is returned; subscribers then see the close. */
    EQ(shmkit_pub_loan(p, 4, 0, &data), SHMKIT_OK);
    EQ(shmkit_pub_close(p), SHMKIT_OK);
    EQ(shmkit_pub_publish(p, 4), SHMKIT_EBADHANDLE);
    EQ(shmkit_sub_recv(s1, SHMKIT_FOREVER, &a), SHMKIT_EDISCONNECTED);
    /* The role is free again. */
    EQ(shmkit_pub_open(nm("ps"), &p2), SHMKIT_OK);
    EQ(shmkit_pub_loan(p2, 2, 0, &data), SHMKIT_OK);
    memcpy(data, "hi", 2);
    EQ(shmkit_pub_publish(p2, 2), SHMKIT_OK);
    EQ(shmkit_sub_recv(s1, SHMKIT_FOREVER, &a), SHMKIT_OK);
    EQ(memcmp(a.data, "hi", 2), 0);
    EQ(shmkit_sub_close(s1), SHMKIT_OK); /* releases `a` */
    EQ(shmkit_pub_close(p2), SHMKIT_OK);
    EQ(shmkit_sub_close(NULL), SHMKIT_EINVAL);
    EQ(shmkit_pub_close(NULL), SHMKIT_EINVAL);
    EQ(shmkit_segment_remove(nm("ps")), SHMKIT_OK);
}

int main(int argc, char **argv) {
    snprintf(prefix, sizeof prefix, "capi-%s-%d", argc > 1 ? argv[1] : "t", (int)getpid());
    test_general();
    test_segments();
    test_mutex();
    test_sem_event();
    test_ring();
    test_pubsub();
    if (failures) {
        fprintf(stderr, "api_test: %d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("api_test: %d checks passed\n", checks);
    return 0;
}
