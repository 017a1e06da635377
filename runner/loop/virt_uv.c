#include "runner/loop/virt_uv.h"

#include <libvirt/libvirt.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "runner/base/list.h"

enum rec_kind { REC_HANDLE, REC_TIMER };

struct rec {
    enum rec_kind kind;
    int id;
    /* desired state, written under the lock by any thread */
    int fd;
    int events;    /* handles: VIR_EVENT_HANDLE_* */
    int frequency; /* timers: -1 off, 0 every iteration, >0 period in ms */
    bool removed;
    bool dirty;
    union {
        virEventHandleCallback hcb;
        virEventTimeoutCallback tcb;
    };
    void *opaque;
    virFreeCallback ff;
    /* uv state, touched only on the loop thread */
    union {
        uv_poll_t poll;
        uv_timer_t timer;
    } uv;
    bool uv_inited;
    bool uv_closing;
    bool firing;         /* inside this timer's callback */
    struct al_list link; /* on ev.recs, under the lock */
};

static struct {
    uv_loop_t *loop;
    uv_thread_t loop_thread;
    uv_async_t wake;
    pthread_mutex_t lock;
    struct al_list recs; /* newest first */
    int next_id;
    bool registered;
    bool shut_down;
    unsigned n_handles, n_timers;
} ev = {
        .lock = PTHREAD_MUTEX_INITIALIZER,
        .recs = {.next = &ev.recs, .prev = &ev.recs},
        .next_id = 1,
};

static bool on_loop_thread(void)
{
    uv_thread_t self = uv_thread_self();
    return uv_thread_equal(&self, &ev.loop_thread);
}

static struct rec *find(enum rec_kind kind, int id)
{
    al_list_for_each(r, &ev.recs, struct rec, link) {
        if (r->kind == kind && r->id == id && !r->removed)
            return r;
    }
    return NULL;
}

static void on_closed(uv_handle_t *h)
{
    struct rec *r = h->data;
    if (r->ff)
        r->ff(r->opaque);
    free(r);
}

static int uv_events_of(int vir)
{
    int e = 0;
    if (vir & VIR_EVENT_HANDLE_READABLE)
        e |= UV_READABLE | UV_DISCONNECT;
    if (vir & VIR_EVENT_HANDLE_WRITABLE)
        e |= UV_WRITABLE;
    return e;
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    struct rec *r = p->data;
    int vir = 0;
    if (status < 0) {
        vir = VIR_EVENT_HANDLE_ERROR;
    } else {
        if (events & UV_READABLE)
            vir |= VIR_EVENT_HANDLE_READABLE;
        if (events & UV_WRITABLE)
            vir |= VIR_EVENT_HANDLE_WRITABLE;
        if (events & UV_DISCONNECT)
            vir |= VIR_EVENT_HANDLE_HANGUP;
    }
    pthread_mutex_lock(&ev.lock);
    bool live = !r->removed;
    virEventHandleCallback cb = r->hcb;
    void *opaque = r->opaque;
    int id = r->id, fd = r->fd;
    pthread_mutex_unlock(&ev.lock);
    if (live)
        cb(id, fd, vir, opaque);
}

static void on_timer(uv_timer_t *t);

/* Brings one record's uv state in line with its desired state. Loop thread,
 * lock held. Returns true when the record was closed (and unlinked). */
static bool apply_one(struct rec *r)
{
    r->dirty = false;
    if (r->removed) {
        al_list_del(&r->link);
        if (r->uv_inited) {
            if (r->kind == REC_HANDLE)
                uv_poll_stop(&r->uv.poll);
            else
                uv_timer_stop(&r->uv.timer);
            r->uv_closing = true;
            uv_close((uv_handle_t *)&r->uv, on_closed);
        } else {
            /* never reached uv: free it from a close callback anyway, by
             * making a throwaway timer, so ff is never synchronous */
            uv_timer_init(ev.loop, &r->uv.timer);
            r->uv.timer.data = r;
            r->uv_closing = true;
            uv_close((uv_handle_t *)&r->uv.timer, on_closed);
        }
        return true;
    }

    if (r->kind == REC_HANDLE) {
        if (!r->uv_inited) {
            if (uv_poll_init(ev.loop, &r->uv.poll, r->fd) < 0)
                return false; /* fd unusable; libvirt will notice on I/O */
            r->uv.poll.data = r;
            uv_unref((uv_handle_t *)&r->uv.poll);
            r->uv_inited = true;
        }
        int e = uv_events_of(r->events);
        if (e)
            uv_poll_start(&r->uv.poll, e, on_poll);
        else
            uv_poll_stop(&r->uv.poll);
    } else {
        if (!r->uv_inited) {
            uv_timer_init(ev.loop, &r->uv.timer);
            r->uv.timer.data = r;
            uv_unref((uv_handle_t *)&r->uv.timer);
            r->uv_inited = true;
        }
        /* libuv runs a timer re-armed with 0 from inside its own callback
         * again in the same pass, forever: wait at least 1 ms then. */
        uint64_t delay = (uint64_t)r->frequency;
        if (delay == 0 && r->firing)
            delay = 1;
        if (r->frequency < 0)
            uv_timer_stop(&r->uv.timer);
        else
            uv_timer_start(&r->uv.timer, on_timer, delay, (uint64_t)r->frequency);
    }
    return false;
}

static void apply_all(void)
{
    bool again = true;
    while (again) {
        again = false;
        al_list_for_each(r, &ev.recs, struct rec, link) {
            /* apply_one() returning true unlinked r: leave before stepping on */
            if (r->dirty && apply_one(r)) {
                again = true; /* list changed under us */
                break;
            }
        }
    }
}

/* Called after a record changed: apply now on the loop thread, else wake it. */
static void changed(struct rec *r)
{
    r->dirty = true;
    if (on_loop_thread())
        apply_all();
    else if (!ev.shut_down)
        uv_async_send(&ev.wake);
}

static void on_wake(uv_async_t *a)
{
    (void)a;
    pthread_mutex_lock(&ev.lock);
    apply_all();
    pthread_mutex_unlock(&ev.lock);
}

static void on_timer(uv_timer_t *t)
{
    struct rec *r = t->data;
    pthread_mutex_lock(&ev.lock);
    bool live = !r->removed && r->frequency >= 0;
    virEventTimeoutCallback cb = r->tcb;
    void *opaque = r->opaque;
    int id = r->id;
    r->firing = true;
    pthread_mutex_unlock(&ev.lock);
    if (live)
        cb(id, opaque);
    pthread_mutex_lock(&ev.lock);
    r->firing = false;
    /* frequency 0 means "every iteration": a one-shot uv timer needs re-arming */
    if (!r->removed && r->frequency == 0 && !uv_is_active((uv_handle_t *)&r->uv.timer))
        uv_timer_start(&r->uv.timer, on_timer, 1, 0);
    pthread_mutex_unlock(&ev.lock);
}

static struct rec *rec_new(enum rec_kind kind)
{
    struct rec *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->kind = kind;
    r->id = ev.next_id++;
    if (ev.next_id <= 0)
        ev.next_id = 1;
    al_list_add(&ev.recs, &r->link);
    return r;
}

static int add_handle(int fd, int events, virEventHandleCallback cb, void *opaque,
                      virFreeCallback ff)
{
    pthread_mutex_lock(&ev.lock);
    struct rec *r = ev.shut_down ? NULL : rec_new(REC_HANDLE);
    int id = -1;
    if (r) {
        r->fd = fd;
        r->events = events;
        r->hcb = cb;
        r->opaque = opaque;
        r->ff = ff;
        id = r->id;
        ev.n_handles++;
        changed(r);
    }
    pthread_mutex_unlock(&ev.lock);
    return id;
}

static void update_handle(int watch, int events)
{
    pthread_mutex_lock(&ev.lock);
    struct rec *r = find(REC_HANDLE, watch);
    if (r && r->events != events) {
        r->events = events;
        changed(r);
    }
    pthread_mutex_unlock(&ev.lock);
}

static int remove_handle(int watch)
{
    int rc = -1;
    pthread_mutex_lock(&ev.lock);
    struct rec *r = find(REC_HANDLE, watch);
    if (r) {
        r->removed = true;
        ev.n_handles--;
        changed(r);
        rc = 0;
    }
    pthread_mutex_unlock(&ev.lock);
    return rc;
}

static int add_timeout(int frequency, virEventTimeoutCallback cb, void *opaque, virFreeCallback ff)
{
    pthread_mutex_lock(&ev.lock);
    struct rec *r = ev.shut_down ? NULL : rec_new(REC_TIMER);
    int id = -1;
    if (r) {
        r->frequency = frequency;
        r->tcb = cb;
        r->opaque = opaque;
        r->ff = ff;
        id = r->id;
        ev.n_timers++;
        changed(r);
    }
    pthread_mutex_unlock(&ev.lock);
    return id;
}

static void update_timeout(int timer, int frequency)
{
    pthread_mutex_lock(&ev.lock);
    struct rec *r = find(REC_TIMER, timer);
    if (r) {
        /* Re-arm even when unchanged: libvirt uses an update to restart a
         * period, and frequency 0 must fire again on the next iteration. */
        r->frequency = frequency;
        changed(r);
    }
    pthread_mutex_unlock(&ev.lock);
}

static int remove_timeout(int timer)
{
    int rc = -1;
    pthread_mutex_lock(&ev.lock);
    struct rec *r = find(REC_TIMER, timer);
    if (r) {
        r->removed = true;
        ev.n_timers--;
        changed(r);
        rc = 0;
    }
    pthread_mutex_unlock(&ev.lock);
    return rc;
}

int al_virt_event_register(uv_loop_t *loop, struct al_error **err)
{
    if (ev.registered) {
        if (ev.loop != loop || ev.shut_down)
            return al_error_set(err, EBUSY,
                                "libvirt's event loop is already bound to another uv loop");
        return 0;
    }
    ev.loop = loop;
    ev.loop_thread = uv_thread_self();
    int r = uv_async_init(loop, &ev.wake, on_wake);
    if (r < 0)
        return al_error_set(err, -r, "creating the libvirt wake-up handle: %s", uv_strerror(r));
    uv_unref((uv_handle_t *)&ev.wake);
    virEventRegisterImpl(add_handle, update_handle, remove_handle, add_timeout, update_timeout,
                         remove_timeout);
    ev.registered = true;
    return 0;
}

static void on_wake_closed(uv_handle_t *h)
{
    (void)h;
}

void al_virt_event_shutdown(void)
{
    if (!ev.registered || ev.shut_down)
        return;
    pthread_mutex_lock(&ev.lock);
    ev.shut_down = true;
    al_list_for_each(r, &ev.recs, struct rec, link) {
        if (!r->removed) {
            r->removed = true;
            if (r->kind == REC_HANDLE)
                ev.n_handles--;
            else
                ev.n_timers--;
        }
        r->dirty = true;
    }
    apply_all();
    pthread_mutex_unlock(&ev.lock);
    uv_close((uv_handle_t *)&ev.wake, on_wake_closed);
}

void al_virt_event_counts(unsigned *ret_handles, unsigned *ret_timers)
{
    pthread_mutex_lock(&ev.lock);
    if (ret_handles)
        *ret_handles = ev.n_handles;
    if (ret_timers)
        *ret_timers = ev.n_timers;
    pthread_mutex_unlock(&ev.lock);
}
