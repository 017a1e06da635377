/* The engine's core: jobs, the queue and observers, submission and
 * cancellation, admission and counts, the engine's life cycle. Scheduling
 * and attempts are in engine_sched.c, warm pools in engine_warm.c, the
 * periodic sync/prune/sweep in engine_housekeeping.c, the start-up reconcile
 * in engine_reconcile.c; engine_priv.h holds what they share. */
#include "runner/engine/engine.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "images/catalog.h"
#include "runner/base/hardlimits.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "runner/engine/engine_priv.h"
#include "runner/engine/store_batch.h"
#include "runner/engine/route.h"

/* ------------------------------------------------------------ helpers */

void eng_kick(struct engine *e)
{
    /* coalesce: many changes in one loop turn schedule once */
    if (!e->stopping)
        uv_timer_start(&e->kick, eng_on_kick, 0, 0);
}

/* Ends a round of observer callbacks; watches removed during it go now. */
void eng_notify_end(struct engine *e)
{
    if (--e->notifying > 0)
        return;
    al_list_for_each_safe(w, next, &e->watches, struct engine_watch, link) {
        if (w->removed) {
            al_list_del(&w->link);
            free(w);
        }
    }
}

void eng_notify_event(struct engine *e, const struct store_event *ev)
{
    e->notifying++;
    al_list_for_each(w, &e->watches, struct engine_watch, link) {
        if (!w->removed && w->o.event)
            w->o.event(ev, w->data);
    }
    eng_notify_end(e);
}

/* Commits a transition and tells the observers. */
int eng_transition(struct ejob *j, enum job_state to, const char *detail, bool has_code, int code)
{
    struct engine *e = j->e;
    struct store_event ev = {0};
    struct al_error *err = NULL;
    struct store_transition t = {
            .to = to, .detail = detail, .has_exit_code = has_code, .exit_code = code};
    int r = store_job_transition(e->store, j->id, &t, &ev, &err);
    if (r < 0) {
        log_error(j->id, "recording %s -> %s failed: %s", job_state_to_string(j->state),
                  job_state_to_string(to), al_error_message(err));
        al_error_free(err);
        return r;
    }
    e->dirty = true;
    log_info(j->id, "%s -> %s%s%s", job_state_to_string(j->state), job_state_to_string(to),
             detail ? ": " : "", detail ? detail : "");
    j->state = to;
    eng_notify_event(e, &ev);
    store_event_clear(&ev);
    return 0;
}

void eng_ejob_free(struct ejob *j)
{
    if (!j)
        return;
    if (j->secrets_registered)
        job_spec_unregister_secrets(j->spec);
    job_spec_free(j->spec);
    free(j->job_dir);
    free(j->workdir_tar);
    free(j->artifacts_dir);
    free(j->env);
    free(j->secrets);
    free((void *)j->req.artifacts);
    image_info_free(j->image.info);
    free(j);
}

/* The job is done with for good: tell the observers, then free it. */
void job_finished(struct ejob *j, const struct attempt_result *last)
{
    struct engine *e = j->e;
    e->notifying++;
    al_list_for_each(w, &e->watches, struct engine_watch, link) {
        if (!w->removed && w->o.finished)
            w->o.finished(j->id, j->state, last, w->data);
    }
    eng_notify_end(e);
    eng_ejob_free(j);
}

void eng_queue_push(struct engine *e, struct ejob *j, bool front)
{
    if (front)
        al_list_add(&e->queue, &j->link);
    else
        al_list_add_tail(&e->queue, &j->link);
}

static struct ejob *find_live(struct engine *e, const char *id)
{
    al_list_for_each(j, &e->queue, struct ejob, link) {
        if (streq(j->id, id))
            return j;
    }
    al_list_for_each(j, &e->running, struct ejob, link) {
        if (streq(j->id, id))
            return j;
    }
    return NULL;
}

/* A job's pool: the one routing recorded in its spec (every job in the
 * engine has been routed); the default pool for a spec that has none. */
const struct config_pool *eng_pool_of(struct engine *e, const struct job_spec *spec)
{
    return config_find_pool(e->cfg, spec->pool ? spec->pool : e->cfg->agent.pool);
}

bool eng_slot_serves_image(struct engine *e, const struct backend_slot *slot, const char *image)
{
    if (slot->cfg->type != BACKEND_PROXMOX)
        return true;
    char buf[32];
    return config_backend_template(e->cfg, slot->cfg, image, buf, sizeof(buf)) != NULL;
}

int engine_route(struct engine *e, const struct job_spec *spec, char *const *among,
                 const struct config_pool **ret_pool, char *why, size_t why_size,
                 struct al_error **err)
{
    struct route rt;
    int r = route_job(e->cfg, spec, among, &rt, err);
    if (r < 0)
        return r;
    if (why)
        snprintf(why, why_size, "%s", rt.why);
    *ret_pool = rt.pool;
    return 0;
}

/* The backends of a pool in order (every backend when it names none). */
size_t eng_pool_slots(struct engine *e, const struct config_pool *pool, struct backend_slot **ret,
                      size_t max)
{
    size_t n = 0;
    if (!pool || !pool->backends || !pool->backends[0]) {
        for (size_t i = 0; i < e->n_slots && n < max; i++)
            ret[n++] = &e->slots[i];
        return n;
    }
    for (char **name = pool->backends; *name && n < max; name++) {
        for (size_t i = 0; i < e->n_slots; i++) {
            if (streq(e->slots[i].cfg->name, *name))
                ret[n++] = &e->slots[i];
        }
    }
    return n;
}

char *engine_job_dir(struct engine *e, const char *job_id)
{
    return al_path_join(e->jobs_dir, job_id);
}

struct store *engine_store(struct engine *e)
{
    return e->store;
}

/* Builds the backend request from the spec; arrays point into the spec. */
int eng_image_ref_resolve(struct engine *e, const struct backend *b, const char *name,
                          struct image_ref *ref, const struct vm_image **ret, struct al_error **err)
{
    ref->info = image_info_free(ref->info);
    *ret = NULL;
    if (!(b->ops->caps & BACKEND_NEEDS_IMAGE))
        return 0;
    int r = image_find(e->cfg->agent.state_dir, name, &ref->info, err);
    if (r < 0)
        return r;
    const struct image_info *i = ref->info;
    ref->vm = (struct vm_image){.name = i->name,
                                .disk = i->disk,
                                .kernel = i->kernel,
                                .initrd = i->initrd,
                                .cmdline = i->cmdline,
                                .virtual_size = i->virtual_size};
    *ret = &ref->vm;
    return 0;
}

int eng_build_request(struct ejob *j, struct al_error **err)
{
    const struct job_spec *s = j->spec;
    const struct config *cfg = j->e->cfg;
    free(j->env);
    free(j->secrets);
    free((void *)j->req.artifacts);
    j->env = calloc(s->n_env + 1, sizeof(*j->env));
    j->secrets = calloc(s->n_secret_env + 1, sizeof(*j->secrets));
    const char **arts = calloc(s->n_artifacts + 1, sizeof(char *));
    if (!j->env || !j->secrets || !arts) {
        free(arts);
        return al_error_set(err, ENOMEM, "building the VM request");
    }
    for (size_t i = 0; i < s->n_env; i++)
        j->env[i] = (struct env_pair){s->env[i].name, s->env[i].value};
    for (size_t i = 0; i < s->n_secret_env; i++)
        j->secrets[i] = (struct env_pair){s->secret_env[i].name, s->secret_env[i].value};
    for (size_t i = 0; i < s->n_artifacts; i++)
        arts[i] = s->artifacts[i];
    j->req = (struct vm_request){
            .job_id = j->id,
            .image_name = s->image ? s->image : cfg->agent.image,
            .cpus = s->resources.cpus,
            .memory = (uint64_t)s->resources.memory_mb << 20,
            .disk_bytes = (uint64_t)s->resources.disk_gb << 30,
            .inject = s->inject,
            .argv = (const char *const *)s->command,
            .script = s->script,
            .env = j->env,
            .n_env = s->n_env,
            .secret_env = j->secrets,
            .n_secret_env = s->n_secret_env,
            .timeout_s = s->timeout_s,
            .artifacts = s->n_artifacts ? arts : NULL,
            .max_artifact_bytes = cfg->agent.max_artifact_bytes,
            .workdir_tar = j->workdir_tar,
    };
    const struct config_pool *pool = eng_pool_of(j->e, s);
    j->req.start = pool ? pool->start : VM_START_BOOT;
    if (!s->n_artifacts) {
        free(arts);
        j->req.artifacts = NULL;
    }
    return 0;
}

/* ------------------------------------------------------------ submit */

static int job_dir_prepare(struct engine *e, struct ejob *j, const struct engine_submit *opts,
                           struct al_error **err)
{
    j->job_dir = engine_job_dir(e, j->id);
    if (!j->job_dir)
        return al_error_set(err, ENOMEM, "job dir");
    int r = al_mkdir_p(j->job_dir, 0750, err);
    if (r < 0)
        return r;
    if (opts && opts->artifacts_dir) {
        j->artifacts_dir = strdup(opts->artifacts_dir);
        if (!j->artifacts_dir)
            return al_error_set(err, ENOMEM, "job dir");
    }
    if (opts && opts->workdir_tar) {
        j->workdir_tar = al_path_join(j->job_dir, "workdir.tar");
        if (!j->workdir_tar)
            return al_error_set(err, ENOMEM, "job dir");
        if (rename(opts->workdir_tar, j->workdir_tar) < 0)
            return al_error_set_errno(err, errno, "moving the work dir archive into %s",
                                      j->job_dir);
    }
    return 0;
}

/* Routes the job, gives it its pool's flavour where it asks nothing, checks
 * it against the pool's limits, and records pool and reason in the spec. */
static int route_and_size(struct engine *e, struct job_spec *spec, char *const *among,
                          const struct config_pool **ret_pool, struct al_error **err)
{
    struct route rt;
    int r = route_job(e->cfg, spec, among, &rt, err);
    if (r == 0)
        r = route_apply_pool(rt.pool, spec, err);
    if (r == 0)
        r = job_spec_apply_defaults(spec, e->cfg, err);
    if (r < 0)
        return r;
    if (!spec->pool && !(spec->pool = strdup(rt.pool->name)))
        return al_error_set(err, ENOMEM, "routing the job: out of memory");
    /* a spec checked before (engine_check) keeps the reason it was routed for */
    if (!spec->pool_reason && !(spec->pool_reason = strdup(rt.why)))
        return al_error_set(err, ENOMEM, "routing the job: out of memory");
    *ret_pool = rt.pool;
    return 0;
}

static int validate(struct engine *e, struct job_spec *spec, char *const *among,
                    struct al_error **err)
{
    const struct config_pool *pool = NULL;
    int r = route_and_size(e, spec, among, &pool, err);
    if (r < 0)
        return r;
    struct backend_slot *slots[32];
    size_t n = eng_pool_slots(e, pool, slots, ARRAY_SIZE(slots));
    bool fits = false, needs_image = false, has_template = false;
    uint64_t mem = (uint64_t)spec->resources.memory_mb << 20;
    for (size_t i = 0; i < n; i++) {
        if (!eng_slot_serves_image(e, slots[i], spec->image))
            continue;
        has_template = true;
        const struct backend_ops *ops =
                slots[i]->b ? slots[i]->b->ops : backend_ops_of(slots[i]->cfg->type);
        if (ops && (ops->caps & BACKEND_NEEDS_IMAGE))
            needs_image = true;
        if (!slots[i]->b) {
            fits = true; /* unknown capacity: it may come back */
            continue;
        }
        struct backend_capacity c;
        slots[i]->b->ops->capacity(slots[i]->b, &c);
        if (c.size_unknown || (spec->resources.cpus <= c.vcpus && mem <= c.memory && c.max_vms > 0))
            fits = true;
    }
    if (n && !has_template)
        return al_error_set(err, EINVAL,
                            "image: no backend of pool \"%s\" has a template for \"%s\" "
                            "(proxmox templates)",
                            pool->name, spec->image);
    if (!fits)
        return al_error_set(err, EINVAL,
                            "resources: %d vCPUs and %d MiB fit no backend of pool \"%s\"",
                            spec->resources.cpus, spec->resources.memory_mb, pool->name);
    /* the overlay may grow to the disk's virtual size on the host */
    uint64_t max_disk = e->cfg->agent.max_disk_bytes;
    uint64_t disk = (uint64_t)spec->resources.disk_gb << 30;
    if (max_disk && disk > max_disk) {
        limits_hit(AL_LIMIT_DISK_SIZE);
        return al_error_set(err, EINVAL,
                            "resources.disk_gb: %d GiB is more than max_disk_size (%" PRIu64
                            " GiB)",
                            spec->resources.disk_gb, max_disk >> 30);
    }
    if (needs_image) {
        struct image_info *img = NULL;
        r = image_find(e->cfg->agent.state_dir, spec->image, &img, err);
        uint64_t vsize = img ? img->virtual_size : 0;
        image_info_free(img);
        if (r < 0)
            return al_error_wrap(err, "image");
        if (max_disk && vsize > max_disk) {
            limits_hit(AL_LIMIT_DISK_SIZE);
            return al_error_set(err, EINVAL,
                                "image: the disk of %s is %" PRIu64
                                " MiB, more than max_disk_size (%" PRIu64 " MiB)",
                                spec->image, vsize >> 20, max_disk >> 20);
        }
    }
    return 0;
}

int engine_check(struct engine *e, struct job_spec *spec, struct al_error **err)
{
    return validate(e, spec, NULL, err);
}

void engine_set_gate(struct engine *e, bool (*gate)(const char *job_id, void *data), void *data)
{
    e->gate = gate;
    e->gate_data = data;
    eng_kick(e);
}

int engine_submit(struct engine *e, struct job_spec *spec, const struct engine_submit *opts,
                  char ret_id[STORE_JOB_ID_SIZE], struct al_error **err)
{
    if (e->stopping) {
        job_spec_free(spec);
        return al_error_set(err, ESHUTDOWN, "agentlabd is shutting down");
    }
    if (e->notifying) {
        /* an observer must defer its submissions to the loop (engine.h) */
        job_spec_free(spec);
        return al_error_set(err, EDEADLK, "engine_submit from inside an observer callback");
    }
    int r = validate(e, spec, opts ? opts->pools : NULL, err);
    if (r < 0) {
        job_spec_free(spec);
        return r;
    }
    struct ejob *j = calloc(1, sizeof(*j));
    if (!j) {
        job_spec_free(spec);
        return al_error_set(err, ENOMEM, "accepting the job");
    }
    al_list_init(&j->link);
    j->e = e;
    j->spec = spec;
    r = job_spec_register_secrets(spec, err);
    if (r < 0) {
        eng_ejob_free(j);
        return r;
    }
    j->secrets_registered = true;
    struct store_event ev = {0};
    r = store_job_insert(e->store, spec, j->id, &ev, err);
    if (r < 0) {
        eng_ejob_free(j);
        return r;
    }
    e->dirty = true;
    j->state = JOB_STATE_QUEUED;
    j->max_attempts = spec->max_attempts;
    if (spec->batch)
        r = store_batch_tag(e->store, spec->batch, j->id, NULL, NULL, err);
    if (r == 0)
        r = job_dir_prepare(e, j, opts, err);
    if (r == 0)
        r = eng_build_request(j, err);
    if (r < 0) {
        char msg[400];
        snprintf(msg, sizeof(msg), "accepting the job: %s", err ? al_error_message(*err) : "");
        struct store_transition t = {.to = JOB_STATE_ERROR, .detail = msg};
        struct al_error *terr = NULL;
        if (store_job_transition(e->store, j->id, &t, NULL, &terr) < 0)
            log_error(j->id, "storing the refusal (%s): %s", msg, al_error_message(terr));
        al_error_free(terr);
        store_event_clear(&ev);
        eng_ejob_free(j);
        return r;
    }
    log_info(j->id, "accepted (%s, pool %s: %s, image %s, %d vCPUs, %d MiB)",
             spec->name ? spec->name : (spec->script ? "script" : spec->command[0]), spec->pool,
             spec->pool_reason, spec->image, spec->resources.cpus, spec->resources.memory_mb);
    eng_notify_event(e, &ev);
    store_event_clear(&ev);
    memcpy(ret_id, j->id, STORE_JOB_ID_SIZE);
    eng_queue_push(e, j, false);
    eng_kick(e);
    return 0;
}

int engine_cancel(struct engine *e, const char *job_id, struct al_error **err)
{
    struct ejob *j = find_live(e, job_id);
    if (!j) {
        struct store_job *sj = NULL;
        struct al_error *gerr = NULL;
        int r = store_job_get(e->store, job_id, &sj, &gerr);
        al_error_free(gerr);
        if (r < 0)
            return al_error_set(err, ENOENT, "no job %s", job_id);
        bool terminal = job_state_is_terminal(sj->state);
        store_job_free(sj);
        return terminal ? al_error_set(err, EALREADY, "job %s has already ended", job_id)
                        : al_error_set(err, EBUSY, "job %s is not handled by this daemon", job_id);
    }
    if (j->cancel_requested)
        return 0;
    j->cancel_requested = true;
    if (j->state == JOB_STATE_QUEUED) {
        al_list_del(&j->link);
        eng_transition(j, JOB_STATE_CANCELED, "canceled while queued", false, 0);
        job_finished(j, NULL);
        return 0;
    }
    log_info(job_id, "cancel requested in %s", job_state_to_string(j->state));
    attempt_cancel(j->attempt);
    return 0;
}

/* What every backend is told of the daemon's settings. */
static struct backend_env backend_env_of(const struct engine *e)
{
    const struct config_agent *a = &e->cfg->agent;
    return (struct backend_env){
            .loop = e->loop,
            .curl = e->curl,
            .owner_id = e->owner_id,
            .state_dir = a->state_dir,
            .run_dir = a->run_dir,
            .heartbeat_timeout_s = a->heartbeat_timeout_s,
            .max_log_bytes = a->max_log_bytes,
            .channel_max_frame_bytes = a->channel_max_frame_bytes,
            .channel_max_bytes_per_s = a->channel_max_bytes_per_s,
            .channel_max_frames_per_s = a->channel_max_frames_per_s,
    };
}

/* Backends that failed to open (libvirtd down at start) are tried again. */
void eng_reopen_backends(struct engine *e)
{
    struct backend_env env = backend_env_of(e);
    for (size_t i = 0; i < e->n_slots; i++) {
        struct backend_slot *s = &e->slots[i];
        if (s->b)
            continue;
        struct al_error *err = NULL;
        if (backend_new(&env, s->cfg, &s->b, &err) == 0) {
            log_info(NULL, "backend %s is available again", s->cfg->name);
            s->open_error[0] = '\0';
            eng_kick(e);
        } else {
            snprintf(s->open_error, sizeof(s->open_error), "%s", al_error_message(err));
            al_error_free(err);
            s->b = NULL;
        }
    }
}

/* ------------------------------------------------------------ observers */

struct engine_watch *engine_observe(struct engine *e, const struct engine_observer *o, void *data)
{
    struct engine_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->o = *o;
    w->data = data;
    al_list_add(&e->watches, &w->link);
    return w;
}

void engine_unobserve(struct engine *e, struct engine_watch *w)
{
    if (!w)
        return;
    if (e->notifying) {
        w->removed = true;
        return;
    }
    al_list_del(&w->link);
    free(w);
}

size_t engine_backends(struct engine *e, struct engine_backend_status *ret, size_t max)
{
    for (size_t i = 0; i < e->n_slots && i < max; i++) {
        struct backend_slot *s = &e->slots[i];
        struct engine_backend_status st = {
                .name = s->cfg->name,
                .type = backend_type_to_string(s->cfg->type),
                .jobs_started = s->jobs_started,
        };
        al_list_for_each(w, &e->warm, struct warm_vm, link) {
            if (w->slot == s) {
                if (w->ready)
                    st.warm_ready++;
                else
                    st.warm_booting++;
            }
        }
        if (s->b) {
            s->b->ops->capacity(s->b, &st.cap);
        } else {
            st.cap.healthy = false;
            snprintf(st.cap.reason, sizeof(st.cap.reason), "%.150s", s->open_error);
        }
        snprintf(st.last_fallback, sizeof(st.last_fallback), "%.150s", s->last_fallback);
        ret[i] = st;
    }
    return e->n_slots;
}

size_t engine_hosts(struct engine *e, struct engine_host *ret, size_t max)
{
    struct engine_backend_status st[64];
    size_t n = engine_backends(e, st, ARRAY_SIZE(st));
    for (size_t i = 0; i < n && i < max && i < ARRAY_SIZE(st); i++) {
        struct backend_slot *s = &e->slots[i];
        struct engine_host h = {.st = st[i], .info = {.images_age_ms = -1}};
        if (s->b && s->b->ops->host_info) {
            s->b->ops->host_info(s->b, &h.info);
        } else {
            h.info.reachable = st[i].cap.healthy;
            if (!h.info.reachable)
                snprintf(h.info.error, sizeof(h.info.error), "%s", st[i].cap.reason);
        }
        ret[i] = h;
    }
    return n;
}

void engine_hosts_clear(struct engine_host *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++)
        backend_host_info_clear(&v[i].info);
}

unsigned engine_live_jobs(struct engine *e, enum job_source_type source)
{
    unsigned n = 0;
    al_list_for_each(j, &e->queue, struct ejob, link)
        n += j->spec->source.type == source;
    al_list_for_each(j, &e->running, struct ejob, link)
        n += j->spec->source.type == source;
    return n;
}

long engine_pool_room(struct engine *e, const char *pool)
{
    const struct config_pool *p =
            config_find_pool(e->cfg, pool && *pool ? pool : e->cfg->agent.pool);
    if (!p)
        return 0;
    struct backend_slot *slots[32];
    size_t n = eng_pool_slots(e, p, slots, ARRAY_SIZE(slots));
    int cpus = p->cpus > 0 ? p->cpus : 1;
    uint64_t mem = p->memory ? p->memory : 1;
    long room = 0;
    for (size_t i = 0; i < n; i++) {
        if (!slots[i]->b)
            continue;
        struct backend_capacity c = {0};
        slots[i]->b->ops->capacity(slots[i]->b, &c);
        if (!c.healthy)
            continue;
        long by_vms = (long)c.max_vms - c.used_vms;
        long by_cpus = ((long)c.vcpus - c.used_vcpus) / cpus;
        long by_mem = c.memory > c.used_memory ? (long)((c.memory - c.used_memory) / mem) : 0;
        long f = by_vms < by_cpus ? by_vms : by_cpus;
        f = f < by_mem ? f : by_mem;
        if (f > 0)
            room += f;
    }
    return room;
}

enum engine_admit_verdict engine_admit(struct engine *e, const struct engine_admit *a, char *why,
                                       size_t why_size)
{
    if (a->cap && a->live >= a->cap) {
        if (why)
            snprintf(why, why_size, "%u jobs of this source are live, its limit", a->live);
        return ENGINE_ADMIT_SOURCE_FULL;
    }
    if (!a->start_now)
        return ENGINE_ADMIT_YES;
    const char *name = a->pool && *a->pool ? a->pool : e->cfg->agent.pool;
    const struct config_pool *p = config_find_pool(e->cfg, name);
    long queued = 0;
    al_list_for_each(j, &e->queue, struct ejob, link)
        queued += eng_pool_of(e, j->spec) == p;
    long room = engine_pool_room(e, name);
    if (room > queued + (long)a->held)
        return ENGINE_ADMIT_YES;
    if (why)
        snprintf(why, why_size,
                 "pool %s has room for %ld more jobs and %ld are queued for it, %u more held", name,
                 room, queued, a->held);
    return ENGINE_ADMIT_POOL_FULL;
}

void engine_pool_counts(struct engine *e, const char *pool, unsigned *ret_queued,
                        unsigned *ret_running)
{
    const struct config_pool *p = config_find_pool(e->cfg, pool);
    unsigned q = 0, r = 0;
    al_list_for_each(j, &e->queue, struct ejob, link)
        q += eng_pool_of(e, j->spec) == p;
    al_list_for_each(j, &e->running, struct ejob, link)
        r += eng_pool_of(e, j->spec) == p;
    if (ret_queued)
        *ret_queued = q;
    if (ret_running)
        *ret_running = r;
}

void engine_counts(struct engine *e, unsigned *ret_queued, unsigned *ret_running)
{
    unsigned q = (unsigned)al_list_length(&e->queue);
    unsigned r = (unsigned)al_list_length(&e->running);
    if (ret_queued)
        *ret_queued = q;
    if (ret_running)
        *ret_running = r;
}

/* ------------------------------------------------------------ lifecycle */

int engine_new(const struct engine_params *p, struct engine **ret, struct al_error **err)
{
    struct engine *e = calloc(1, sizeof(*e));
    if (!e)
        return al_error_set(err, ENOMEM, "allocating the engine");
    e->loop = p->loop;
    e->cfg = p->cfg;
    e->store = p->store;
    e->curl = p->curl;
    e->owner_id = strdup(p->owner_id);
    e->jobs_dir = p->jobs_dir ? strdup(p->jobs_dir) : al_path_join(p->cfg->agent.state_dir, "jobs");
    e->reconcile_only = p->reconcile_only;
    al_list_init(&e->queue);
    al_list_init(&e->running);
    al_list_init(&e->watches);
    al_list_init(&e->warm);
    e->slots = calloc(p->cfg->n_backends, sizeof(*e->slots));
    if (!e->owner_id || !e->jobs_dir || !e->slots) {
        free(e->owner_id);
        free(e->jobs_dir);
        free(e->slots);
        free(e);
        return al_error_set(err, ENOMEM, "allocating the engine");
    }
    int r = al_mkdir_p(e->jobs_dir, 0711, err);
    if (r < 0) {
        free(e->owner_id);
        free(e->jobs_dir);
        free(e->slots);
        free(e);
        return r;
    }
    struct backend_env env = backend_env_of(e);
    e->n_slots = p->cfg->n_backends;
    for (size_t i = 0; i < e->n_slots; i++) {
        struct backend_slot *s = &e->slots[i];
        s->cfg = &p->cfg->backends[i];
        struct al_error *berr = NULL;
        if (backend_new(&env, s->cfg, &s->b, &berr) < 0) {
            snprintf(s->open_error, sizeof(s->open_error), "%s", al_error_message(berr));
            log_error(NULL, "%s", al_error_message(berr));
            al_error_free(berr);
            s->b = NULL;
        }
    }
    uv_timer_init(p->loop, &e->kick);
    e->kick.data = e;
    uv_timer_init(p->loop, &e->housekeeping);
    e->housekeeping.data = e;
    uv_timer_start(&e->housekeeping, eng_on_housekeeping, SYNC_INTERVAL_MS, SYNC_INTERVAL_MS);
    *ret = e;
    return 0;
}

static void on_engine_handle_closed(uv_handle_t *h)
{
    struct engine *e = h->data;
    if (--e->pending_closes > 0)
        return;
    void (*done)(void *) = e->stopped;
    void *data = e->stopped_data;
    al_list_for_each_safe(w, next, &e->watches, struct engine_watch, link) {
        free(w);
    }
    free(e->slots);
    free(e->owner_id);
    free(e->jobs_dir);
    free(e);
    if (done)
        done(data);
}

static void on_backend_closed(void *data)
{
    struct engine *e = data;
    if (--e->backends_closing > 0)
        return;
    e->pending_closes = 2;
    uv_close((uv_handle_t *)&e->kick, on_engine_handle_closed);
    uv_close((uv_handle_t *)&e->housekeeping, on_engine_handle_closed);
}

void eng_maybe_finish_stop(struct engine *e)
{
    if (!e->stopping || !al_list_empty(&e->running) || e->backends_closing || e->pending_closes ||
        e->sweep_pending || e->workers || !al_list_empty(&e->warm) || e->warm_dying)
        return;
    /* queued jobs stay QUEUED in the store: a restart resumes them */
    al_list_for_each_safe(j, next, &e->queue, struct ejob, link) {
        al_list_del(&j->link);
        eng_ejob_free(j);
    }
    e->backends_closing = 1;
    for (size_t i = 0; i < e->n_slots; i++) {
        if (e->slots[i].b) {
            e->backends_closing++;
            backend_free(e->slots[i].b, on_backend_closed, e);
            e->slots[i].b = NULL;
        }
    }
    on_backend_closed(e);
}

void engine_stop(struct engine *e, void (*done)(void *data), void *data)
{
    if (e->stopping)
        return;
    e->stopping = true;
    e->stopped = done;
    e->stopped_data = data;
    uv_timer_stop(&e->kick);
    uv_timer_stop(&e->housekeeping);
    al_list_for_each(j, &e->running, struct ejob, link)
        attempt_cancel(j->attempt);
    while (!al_list_empty(&e->warm))
        eng_warm_destroy(al_list_first_entry(&e->warm, struct warm_vm, link));
    eng_maybe_finish_stop(e);
}
