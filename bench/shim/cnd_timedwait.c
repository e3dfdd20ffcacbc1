/*
 * Preloaded before libfaketime into the control plane whose wall clock `bench chaos` steps
 * (fault `clock`). libfaketime moves what clock_gettime(CLOCK_REALTIME) returns and translates
 * the deadlines of pthread_cond_timedwait, but not those of C11 cnd_timedwait, which librdkafka
 * uses (glibc calls its own pthread code directly, past the preload). A deadline computed on the
 * stepped clock then reaches the kernel untranslated: a clock behind the real one makes every
 * timed wait of librdkafka's threads return at once, and they spin (a core of the machine for
 * as long as the step lasts); one ahead makes them oversleep by the step. Routing cnd_timedwait
 * through pthread_cond_timedwait (glibc's cnd_t and mtx_t are its pthread types) lets
 * libfaketime translate these deadlines too, as it does every other wait of the process.
 */
#include <errno.h>
#include <pthread.h>
#include <threads.h>
#include <time.h>

int cnd_timedwait(cnd_t *cond, mtx_t *mutex, const struct timespec *deadline) {
    int r = pthread_cond_timedwait((pthread_cond_t *)cond, (pthread_mutex_t *)mutex, deadline);
    if (r == 0) {
        return thrd_success;
    }
    return r == ETIMEDOUT ? thrd_timedout : thrd_error;
}
