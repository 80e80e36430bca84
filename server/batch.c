/* batch.c — the dynamic batcher (see batch.h for the design).
 *
 * DESIGN: a singly linked FIFO of jobs under one mutex. A job stays at the
 * head until its last row is taken; queued_rows counts untaken rows. Workers
 * wait on `cond`; a push or a close broadcasts. With a queue delay, a worker
 * that finds too few rows sleeps until the head job's enqueue time plus the
 * delay (timed wait), so batches flush on size or on time, whichever first.
 * Tasks wait in their own FIFO and go out before any row.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto/rk.h"
#include "server/batch.h"

typedef struct jlist {
    batch_job *head, *tail;
} jlist;

struct batch_queue {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    batch_opts o;
    jlist jobs[2];              /* [0]: normal, [1]: low priority */
    batch_task *task_head, *task_tail;
    batch_task *low_task_head, *low_task_tail; /* run only when no normal job or task waits */
    size_t queued_rows;         /* normal jobs only */
    size_t low_rows;            /* low-priority jobs */
    int closed;
};

uint64_t batch_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

batch_queue *batch_new(const batch_opts *o)
{
    if (!o->max_batch_rows || !o->max_queue_rows) return NULL;
    batch_queue *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->o = *o;
    if (!q->o.workers) q->o.workers = 1;
    pthread_mutex_init(&q->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->cond, &ca);
    pthread_condattr_destroy(&ca);
    return q;
}

void batch_destroy(batch_queue *q)
{
    if (!q) return;
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cond);
    free(q);
}

int batch_push(batch_queue *q, batch_job *job, uint64_t now_ns)
{
    int rc = 0;
    pthread_mutex_lock(&q->mu);
    if (q->closed) {
        rc = RK_EUNAVAIL;
    } else if (job->n_rows == 0 ||
               (job->low ? q->low_rows + job->n_rows > q->o.max_low_rows
                         : q->queued_rows + job->n_rows > q->o.max_queue_rows)) {
        rc = RK_EBUSY;
    } else {
        job->enq_ns = now_ns;
        job->next_row = 0;
        job->next = NULL;
        job->chunk_rows = job->n_rows;
        if (!job->whole && job->n_rows > q->o.split_min_rows && q->o.workers > 1) {
            size_t c = (job->n_rows + q->o.workers - 1) / q->o.workers;
            if (c < q->o.split_min_rows) c = q->o.split_min_rows;
            job->chunk_rows = (uint32_t)c;
        }
        if (job->chunk_rows > q->o.max_batch_rows) job->chunk_rows = (uint32_t)q->o.max_batch_rows;
        jlist *l = &q->jobs[job->low != 0];
        if (l->tail) l->tail->next = job;
        else l->head = job;
        l->tail = job;
        if (job->low) q->low_rows += job->n_rows;
        else q->queued_rows += job->n_rows;
        /* a large job can feed several workers at once */
        if (job->chunk_rows < job->n_rows) pthread_cond_broadcast(&q->cond);
        else pthread_cond_signal(&q->cond);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

int batch_push_task(batch_queue *q, batch_task *t)
{
    int rc = 0;
    pthread_mutex_lock(&q->mu);
    if (q->closed) {
        rc = RK_EUNAVAIL;
    } else {
        t->next = NULL;
        batch_task **head = t->low ? &q->low_task_head : &q->task_head, **tail = t->low ? &q->low_task_tail : &q->task_tail;
        if (*tail) (*tail)->next = t;
        else *head = t;
        *tail = t;
        pthread_cond_signal(&q->cond);
    }
    pthread_mutex_unlock(&q->mu);
    return rc;
}

/* Appends a segment to a growable array; returns 0 or -1. */
static int seg_push(batch_seg **v, size_t *n, size_t *cap, batch_seg s)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 8;
        batch_seg *nv = realloc(*v, c * sizeof *nv);
        if (!nv) return -1;
        *v = nv;
        *cap = c;
    }
    (*v)[(*n)++] = s;
    return 0;
}

/* Unlinks the head job of l. */
static void pop_head(jlist *l)
{
    batch_job *j = l->head;
    l->head = j->next;
    if (!l->head) l->tail = NULL;
    j->next = NULL;
}

/* The row count of the list l (mutex held). */
static size_t *rows_of(batch_queue *q, const jlist *l) { return l == &q->jobs[0] ? &q->queued_rows : &q->low_rows; }

/* Cuts one batch from the head of list l (mutex held). Returns NULL only
 * when out of memory. */
static batch_work *cut(batch_queue *q, jlist *l, uint64_t now)
{
    batch_work *w = calloc(1, sizeof *w);
    size_t cap = 0, ecap = 0, *rows = rows_of(q, l);
    if (!w) return NULL;
    while (l->head) {
        batch_job *j = l->head;
        uint32_t left = j->n_rows - j->next_row;
        if (j->deadline_ns && j->deadline_ns <= now) {
            if (seg_push(&w->expired, &w->n_expired, &ecap, (batch_seg){j, j->next_row, left}) < 0) break;
            *rows -= left;
            j->next_row = j->n_rows;
            pop_head(l);
            continue;
        }
        if (w->n_segs && j->key != w->key) break;
        size_t room = q->o.max_batch_rows - w->n_rows;
        if (room == 0) break;
        uint32_t k = left < j->chunk_rows ? left : j->chunk_rows;
        if (k > room) k = (uint32_t)room;
        if (seg_push(&w->segs, &w->n_segs, &cap, (batch_seg){j, j->next_row, k}) < 0) break;
        w->key = j->key;
        w->n_rows += k;
        j->next_row += k;
        *rows -= k;
        if (j->next_row == j->n_rows) {
            pop_head(l);
        } else {
            /* one chunk of a split job per batch; let another worker take the next */
            pthread_cond_signal(&q->cond);
            break;
        }
    }
    return w;
}

batch_work *batch_take(batch_queue *q)
{
    batch_work *w = NULL;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        /* tasks first: they are short and unblock rows; low-priority ones
         * only when no normal job waits either */
        int low_task = !q->task_head && !q->jobs[0].head && q->low_task_head;
        if (q->task_head || low_task) {
            if (!(w = calloc(1, sizeof *w))) {
                pthread_mutex_unlock(&q->mu);
                nanosleep(&(struct timespec){0, 1000000}, NULL);
                pthread_mutex_lock(&q->mu);
                continue;
            }
            batch_task **head = low_task ? &q->low_task_head : &q->task_head;
            batch_task **tail = low_task ? &q->low_task_tail : &q->task_tail;
            w->task = *head;
            *head = w->task->next;
            if (!*head) *tail = NULL;
            w->task->next = NULL;
            break;
        }
        /* normal jobs first; low-priority ones only when none waits */
        jlist *l = q->jobs[0].head ? &q->jobs[0] : &q->jobs[1];
        if (!l->head) {
            if (q->closed) break;
            pthread_cond_wait(&q->cond, &q->mu);
            continue;
        }
        uint64_t now = batch_now_ns();
        if (l == &q->jobs[0] && q->o.max_delay_us && !q->closed && q->queued_rows < q->o.max_batch_rows) {
            uint64_t due = l->head->enq_ns + q->o.max_delay_us * 1000u;
            if (l->head->deadline_ns && l->head->deadline_ns < due) due = l->head->deadline_ns;
            if (now < due) {
                struct timespec ts = {(time_t)(due / 1000000000u), (long)(due % 1000000000u)};
                pthread_cond_timedwait(&q->cond, &q->mu, &ts);
                continue;
            }
        }
        w = cut(q, l, now);
        if (w && (w->n_segs || w->n_expired)) break;
        batch_free(w);
        w = NULL;
        if (!l->head) continue;
        /* out of memory: back off briefly rather than spin */
        pthread_mutex_unlock(&q->mu);
        nanosleep(&(struct timespec){0, 1000000}, NULL);
        pthread_mutex_lock(&q->mu);
    }
    pthread_mutex_unlock(&q->mu);
    return w;
}

batch_work *batch_expire(batch_queue *q, uint64_t now_ns)
{
    batch_work *w = NULL;
    size_t ecap = 0;
    pthread_mutex_lock(&q->mu);
    for (int li = 0; li < 2; li++) {
        jlist *l = &q->jobs[li];
        size_t *rows = rows_of(q, l);
        batch_job **pp = &l->head, *prev = NULL;
        while (*pp) {
            batch_job *j = *pp;
            if (j->deadline_ns && j->deadline_ns <= now_ns) {
                if (!w && !(w = calloc(1, sizeof *w))) break;
                uint32_t left = j->n_rows - j->next_row;
                if (seg_push(&w->expired, &w->n_expired, &ecap, (batch_seg){j, j->next_row, left}) < 0) break;
                *rows -= left;
                j->next_row = j->n_rows;
                *pp = j->next;
                if (l->tail == j) l->tail = prev;
                j->next = NULL;
                continue;
            }
            prev = j;
            pp = &j->next;
        }
    }
    pthread_mutex_unlock(&q->mu);
    if (w && !w->n_expired) {
        batch_free(w);
        w = NULL;
    }
    return w;
}

void batch_close(batch_queue *q)
{
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->mu);
}

void batch_free(batch_work *w)
{
    if (!w) return;
    free(w->segs);
    free(w->expired);
    free(w);
}

size_t batch_queued_rows(batch_queue *q)
{
    pthread_mutex_lock(&q->mu);
    size_t n = q->queued_rows;
    pthread_mutex_unlock(&q->mu);
    return n;
}

size_t batch_low_rows(batch_queue *q)
{
    pthread_mutex_lock(&q->mu);
    size_t n = q->low_rows;
    pthread_mutex_unlock(&q->mu);
    return n;
}
