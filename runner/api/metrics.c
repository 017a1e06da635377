#include "runner/api/metrics.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/fsspace.h"
#include "runner/base/log.h"
#include "runner/base/hardlimits.h"
#include "runner/base/list.h"
#include "provision/snapshot.h"

#define N_SOURCES    (JOB_SOURCE_CLI + 1) /* JOB_SOURCE_NONE .. JOB_SOURCE_CLI */
#define N_BUCKETS    18
#define N_BUCKETS_   64 /* hash buckets of live jobs */
#define MAX_BACKENDS 64

static const double bucket_le[N_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,    2.5,
                                            5,     10,   30,    60,   120, 300,  600, 1800, 3600};

struct histogram {
    uint64_t buckets[N_BUCKETS]; /* non-cumulative; rendered cumulative */
    uint64_t count;
    double sum;
};

enum phase { PH_PROVISION, PH_START, PH_BOOT, PH_RUN, PH_CLEANUP, PH_TOTAL, PH_COUNT };
static const char *const phase_names[PH_COUNT] = {"provision", "start",   "boot",
                                                  "run",       "cleanup", "total"};

enum err_kind {
    ERR_JOB,
    ERR_ATTEMPT,
    ERR_CLEANUP,
    ERR_LOG_TRUNCATED,
    ERR_ARTIFACTS,
    ERR_RECONCILE,
    ERR_KIND_COUNT,
};
static const char *const err_names[ERR_KIND_COUNT] = {"job_error",         "attempt_error",
                                                      "cleanup_failed",    "log_truncated",
                                                      "artifacts_skipped", "reconcile"};

/* A job the engine still has. */
struct live_job {
    char id[STORE_JOB_ID_SIZE];
    enum job_source_type source;
    enum job_state state;
    int64_t queued_ms;
    struct al_list link; /* on its hash bucket */
};

struct api_metrics {
    struct store *store;
    struct al_list live[N_BUCKETS_];
    uint64_t submitted[N_SOURCES];
    uint64_t finished[JOB_STATE_COUNT][N_SOURCES];
    struct histogram phases[PH_COUNT];
    struct histogram queue_wait;
    uint64_t errors[ERR_KIND_COUNT];
    uint64_t throttled_ms;     /* guests held back by the channel's rate limit */
    uint64_t boot_watchdog[2]; /* guests ended for no sign of life: under kvm, tcg */
    struct engine_reconcile_report reconcile;
};

static unsigned hash_id(const char *id)
{
    unsigned h = 2166136261u;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return h % N_BUCKETS_;
}

static struct live_job *live_find(struct api_metrics *m, const char *id)
{
    al_list_for_each(j, &m->live[hash_id(id)], struct live_job, link) {
        if (streq(j->id, id))
            return j;
    }
    return NULL;
}

static struct live_job *live_add(struct api_metrics *m, const char *id, enum job_source_type source,
                                 enum job_state state, int64_t queued_ms)
{
    struct live_job *j = calloc(1, sizeof(*j));
    if (!j)
        return NULL;
    snprintf(j->id, sizeof(j->id), "%s", id);
    j->source = source;
    j->state = state;
    j->queued_ms = queued_ms;
    al_list_add(&m->live[hash_id(id)], &j->link);
    return j;
}

static void live_remove(struct api_metrics *m, const char *id)
{
    struct live_job *j = live_find(m, id);
    if (j) {
        al_list_del(&j->link);
        free(j);
    }
}

static unsigned source_index(enum job_source_type t)
{
    return (unsigned)t < N_SOURCES ? (unsigned)t : 0;
}

static const char *source_label(unsigned i)
{
    const char *s = job_source_type_to_string((enum job_source_type)i);
    return *s ? s : "none";
}

static void observe(struct histogram *h, double seconds)
{
    size_t i = 0;
    while (i < N_BUCKETS && seconds > bucket_le[i])
        i++;
    if (i < N_BUCKETS)
        h->buckets[i]++;
    h->count++;
    h->sum += seconds;
}

/* Looks the job up in the store for what events do not carry (its source). */
static struct live_job *live_from_store(struct api_metrics *m, const char *id, int64_t at_ms)
{
    struct store_job *sj = NULL;
    struct al_error *err = NULL;
    enum job_source_type src = JOB_SOURCE_NONE;
    enum job_state st = JOB_STATE_QUEUED;
    if (store_job_get(m->store, id, &sj, &err) == 0) {
        src = sj->source_type;
        st = sj->state;
        store_job_free(sj);
    }
    al_error_free(err);
    return live_add(m, id, src, st, at_ms);
}

int api_metrics_new(struct store *store, struct api_metrics **ret, struct al_error **err)
{
    struct api_metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return al_error_set(err, ENOMEM, "metrics");
    for (size_t i = 0; i < N_BUCKETS_; i++)
        al_list_init(&m->live[i]);
    m->store = store;
    static const enum job_state live_states[] = {JOB_STATE_QUEUED, JOB_STATE_PROVISIONING,
                                                 JOB_STATE_BOOTING, JOB_STATE_RUNNING};
    for (size_t si = 0; si < ARRAY_SIZE(live_states); si++) {
        char cursor[STORE_JOB_ID_SIZE] = "";
        do {
            struct store_job_filter f = {.state = live_states[si],
                                         .cursor = cursor[0] ? cursor : NULL,
                                         .limit = STORE_LIST_MAX};
            struct store_job_page page = {0};
            int r = store_job_list(store, &f, &page, err);
            if (r < 0) {
                api_metrics_free(m);
                return r;
            }
            for (size_t i = 0; i < page.n; i++)
                live_add(m, page.jobs[i]->id, page.jobs[i]->source_type, page.jobs[i]->state,
                         page.jobs[i]->updated_ms);
            snprintf(cursor, sizeof(cursor), "%s", page.next_cursor);
            store_job_page_clear(&page);
        } while (cursor[0]);
    }
    *ret = m;
    return 0;
}

struct api_metrics *api_metrics_free(struct api_metrics *m)
{
    if (!m)
        return NULL;
    for (size_t i = 0; i < N_BUCKETS_; i++) {
        al_list_for_each_safe(j, next, &m->live[i], struct live_job, link)
            free(j);
    }
    free(m);
    return NULL;
}

void api_metrics_on_event(struct api_metrics *m, const struct store_event *ev)
{
    struct live_job *j = live_find(m, ev->job_id);
    if (ev->from == JOB_STATE_NONE) {
        if (!j)
            j = live_from_store(m, ev->job_id, ev->at_ms);
        if (j)
            m->submitted[source_index(j->source)]++;
        return;
    }
    if (!j && !(j = live_from_store(m, ev->job_id, ev->at_ms)))
        return;
    if (ev->to == JOB_STATE_PROVISIONING && j->state == JOB_STATE_QUEUED && j->queued_ms &&
        ev->at_ms >= j->queued_ms)
        observe(&m->queue_wait, (double)(ev->at_ms - j->queued_ms) / 1000.0);
    if (ev->to == JOB_STATE_QUEUED)
        j->queued_ms = ev->at_ms;
    j->state = ev->to;
}

void api_metrics_on_attempt_done(struct api_metrics *m, const struct attempt_result *r)
{
    const uint64_t ms[PH_COUNT] = {r->ms_provision, r->ms_start,   r->ms_boot,
                                   r->ms_run,       r->ms_cleanup, r->ms_total};
    for (size_t i = 0; i < PH_COUNT; i++)
        observe(&m->phases[i], (double)ms[i] / 1000.0);
    if (r->outcome == ATTEMPT_ERROR)
        m->errors[ERR_ATTEMPT]++;
    if (r->cleanup_failed)
        m->errors[ERR_CLEANUP]++;
    if (r->log_truncated)
        m->errors[ERR_LOG_TRUNCATED]++;
    if (r->artifacts.skipped || r->artifacts.truncated)
        m->errors[ERR_ARTIFACTS]++;
    m->throttled_ms += r->throttled_ms;
    if (r->silent_boot)
        m->boot_watchdog[streq(r->accel, "kvm") ? 0 : 1]++;
}

void api_metrics_on_finished(struct api_metrics *m, const char *job_id, enum job_state state)
{
    struct live_job *j = live_find(m, job_id);
    enum job_source_type src = j ? j->source : JOB_SOURCE_NONE;
    if ((unsigned)state < JOB_STATE_COUNT)
        m->finished[state][source_index(src)]++;
    if (state == JOB_STATE_ERROR)
        m->errors[ERR_JOB]++;
    live_remove(m, job_id);
}

void api_metrics_add_reconcile(struct api_metrics *m, const struct engine_reconcile_report *r)
{
    m->reconcile.jobs_failed += r->jobs_failed;
    m->reconcile.jobs_requeued += r->jobs_requeued;
    m->reconcile.jobs_resumed += r->jobs_resumed;
    m->reconcile.vms_destroyed += r->vms_destroyed;
    m->reconcile.dirs_removed += r->dirs_removed;
    m->reconcile.errors += r->errors;
    m->errors[ERR_RECONCILE] += r->errors;
}

static int header(struct al_buf *o, const char *name, const char *type, const char *help)
{
    return al_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static int render_histogram(struct al_buf *o, const char *name, const char *label,
                            const struct histogram *h)
{
    int r = 0;
    uint64_t cum = 0;
    const char *sep = label[0] ? "," : "";
    for (size_t i = 0; i < N_BUCKETS; i++) {
        cum += h->buckets[i];
        r |= al_buf_printf(o, "%s_bucket{%s%sle=\"%g\"} %" PRIu64 "\n", name, label, sep,
                           bucket_le[i], cum);
    }
    r |= al_buf_printf(o, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", name, label, sep, h->count);
    if (label[0]) {
        r |= al_buf_printf(o, "%s_sum{%s} %.3f\n", name, label, h->sum);
        r |= al_buf_printf(o, "%s_count{%s} %" PRIu64 "\n", name, label, h->count);
    } else {
        r |= al_buf_printf(o, "%s_sum %.3f\n", name, h->sum);
        r |= al_buf_printf(o, "%s_count %" PRIu64 "\n", name, h->count);
    }
    return r;
}

int api_metrics_render(struct api_metrics *m, struct engine *e, const struct api_server *server,
                       const char *state_dir, struct al_buf *o)
{
    int r = 0;
    struct al_fs_space space;
    if (state_dir && al_fs_space(state_dir, &space) == 0) {
        r |= header(o, "agentlab_state_dir_free_bytes", "gauge",
                    "Free space of the state dir's file system (database, logs, images).");
        r |= al_buf_printf(o, "agentlab_state_dir_free_bytes %" PRIu64 "\n", space.free_bytes);
        r |= header(o, "agentlab_state_dir_low", "gauge",
                    "1 while the state dir's file system is nearly full (/healthz: degraded).");
        r |= al_buf_printf(o, "agentlab_state_dir_low %d\n", space.low ? 1 : 0);
    }
    r |= header(o, "agentlab_build_info", "gauge", "Version of agentlabd.");
    r |= al_buf_printf(o, "agentlab_build_info{version=\"%s\"} 1\n", AL_VERSION);

    /* live jobs by state and source */
    uint64_t live[JOB_STATE_COUNT][N_SOURCES] = {{0}};
    for (size_t i = 0; i < N_BUCKETS_; i++) {
        al_list_for_each(j, &m->live[i], struct live_job, link) {
            if ((unsigned)j->state < JOB_STATE_COUNT)
                live[j->state][source_index(j->source)]++;
        }
    }
    r |= header(o, "agentlab_jobs", "gauge", "Jobs not finished yet, by state and source.");
    for (int st = JOB_STATE_QUEUED; st <= JOB_STATE_RUNNING; st++) {
        for (unsigned s = 0; s < N_SOURCES; s++)
            r |= al_buf_printf(o, "agentlab_jobs{state=\"%s\",source=\"%s\"} %" PRIu64 "\n",
                               job_state_to_string(st), source_label(s), live[st][s]);
    }
    r |= header(o, "agentlab_jobs_submitted_total", "counter", "Jobs accepted, by source.");
    for (unsigned s = 0; s < N_SOURCES; s++)
        r |= al_buf_printf(o, "agentlab_jobs_submitted_total{source=\"%s\"} %" PRIu64 "\n",
                           source_label(s), m->submitted[s]);
    r |= header(o, "agentlab_jobs_finished_total", "counter",
                "Jobs that reached their final state, by state and source.");
    for (int st = JOB_STATE_SUCCEEDED; st < JOB_STATE_COUNT; st++) {
        for (unsigned s = 0; s < N_SOURCES; s++)
            r |= al_buf_printf(
                    o, "agentlab_jobs_finished_total{state=\"%s\",source=\"%s\"} %" PRIu64 "\n",
                    job_state_to_string(st), source_label(s), m->finished[st][s]);
    }
    unsigned queued = 0, running = 0;
    engine_counts(e, &queued, &running);
    r |= header(o, "agentlab_engine_queued", "gauge", "Jobs waiting for capacity.");
    r |= al_buf_printf(o, "agentlab_engine_queued %u\n", queued);
    r |= header(o, "agentlab_engine_running", "gauge", "Jobs with a VM.");
    r |= al_buf_printf(o, "agentlab_engine_running %u\n", running);

    r |= header(o, "agentlab_job_phase_duration_seconds", "histogram",
                "Duration of each phase of an attempt.");
    for (size_t i = 0; i < PH_COUNT; i++) {
        char label[32];
        snprintf(label, sizeof(label), "phase=\"%s\"", phase_names[i]);
        r |= render_histogram(o, "agentlab_job_phase_duration_seconds", label, &m->phases[i]);
    }
    r |= header(o, "agentlab_job_queue_wait_seconds", "histogram",
                "Time from QUEUED to PROVISIONING.");
    r |= render_histogram(o, "agentlab_job_queue_wait_seconds", "", &m->queue_wait);

    struct engine_backend_status bs[MAX_BACKENDS];
    size_t nb = engine_backends(e, bs, MAX_BACKENDS);
    if (nb > MAX_BACKENDS)
        nb = MAX_BACKENDS;
    static const struct {
        const char *name, *help;
    } bmetrics[] = {
            {"agentlab_backend_up", "1 when the backend is healthy."},
            {"agentlab_backend_vms", "VMs running on the backend."},
            {"agentlab_backend_vms_max", "VM capacity of the backend."},
            {"agentlab_backend_vcpus", "vCPU capacity of the backend."},
            {"agentlab_backend_vcpus_used", "vCPUs in use on the backend."},
            {"agentlab_backend_memory_bytes", "Memory capacity of the backend."},
            {"agentlab_backend_memory_used_bytes", "Memory in use on the backend."},
            {"agentlab_backend_warm_ready_vms", "Warm VMs booted and waiting on the backend."},
            {"agentlab_backend_warm_booting_vms", "Warm VMs still booting on the backend."},
            {"agentlab_backend_jobs_started_total", "Attempts started on the backend."},
    };
    for (size_t k = 0; k < ARRAY_SIZE(bmetrics); k++) {
        bool counter = strstr(bmetrics[k].name, "_total") != NULL;
        r |= header(o, bmetrics[k].name, counter ? "counter" : "gauge", bmetrics[k].help);
        for (size_t i = 0; i < nb; i++) {
            const struct backend_capacity *c = &bs[i].cap;
            uint64_t v = 0;
            switch (k) {
            case 0:
                v = c->healthy;
                break;
            case 1:
                v = (uint64_t)(c->used_vms > 0 ? c->used_vms : 0);
                break;
            case 2:
                v = (uint64_t)(c->max_vms > 0 ? c->max_vms : 0);
                break;
            case 3:
                v = (uint64_t)(c->vcpus > 0 ? c->vcpus : 0);
                break;
            case 4:
                v = (uint64_t)(c->used_vcpus > 0 ? c->used_vcpus : 0);
                break;
            case 5:
                v = c->memory;
                break;
            case 6:
                v = c->used_memory;
                break;
            case 7:
                v = bs[i].warm_ready;
                break;
            case 8:
                v = bs[i].warm_booting;
                break;
            default:
                v = bs[i].jobs_started;
                break;
            }
            r |= al_buf_printf(o, "%s{backend=\"%s\",type=\"%s\"} %" PRIu64 "\n", bmetrics[k].name,
                               bs[i].name, bs[i].type, v);
        }
    }

    r |= header(o, "agentlab_reconcile_actions_total", "counter",
                "What reconciles and sweeps did.");
    const struct {
        const char *action;
        unsigned v;
    } rec[] = {
            {"jobs_failed", m->reconcile.jobs_failed},
            {"jobs_requeued", m->reconcile.jobs_requeued},
            {"jobs_resumed", m->reconcile.jobs_resumed},
            {"vms_destroyed", m->reconcile.vms_destroyed},
            {"dirs_removed", m->reconcile.dirs_removed},
    };
    for (size_t i = 0; i < ARRAY_SIZE(rec); i++)
        r |= al_buf_printf(o, "agentlab_reconcile_actions_total{action=\"%s\"} %u\n", rec[i].action,
                           rec[i].v);

    struct api_server_stats st = {0};
    if (server)
        api_server_stats(server, &st);
    r |= header(o, "agentlab_errors_total", "counter", "Errors by kind.");
    for (size_t i = 0; i < ERR_KIND_COUNT; i++)
        r |= al_buf_printf(o, "agentlab_errors_total{kind=\"%s\"} %" PRIu64 "\n", err_names[i],
                           m->errors[i]);
    r |= al_buf_printf(o, "agentlab_errors_total{kind=\"api_5xx\"} %" PRIu64 "\n",
                       st.responses_by_class[5]);

    r |= header(o, "agentlab_boot_watchdog_total", "counter",
                "Guests ended for showing no sign of life after they started, by accelerator; "
                "each job is retried once under TCG.");
    r |= al_buf_printf(o, "agentlab_boot_watchdog_total{accel=\"kvm\"} %" PRIu64 "\n",
                       m->boot_watchdog[0]);
    r |= al_buf_printf(o, "agentlab_boot_watchdog_total{accel=\"tcg\"} %" PRIu64 "\n",
                       m->boot_watchdog[1]);

    r |= header(o, "agentlab_limit_hits_total", "counter",
                "Times a hard limit was hit, by limit (once per job for the job limits).");
    for (unsigned i = 0; i < AL_LIMIT_COUNT; i++)
        r |= al_buf_printf(o, "agentlab_limit_hits_total{limit=\"%s\"} %" PRIu64 "\n",
                           al_limit_name((enum al_limit)i), limits_hits((enum al_limit)i));
    r |= header(o, "agentlab_snapshot_restores_total", "counter",
                "Job VMs restored from a memory snapshot instead of booting.");
    r |= al_buf_printf(o, "agentlab_snapshot_restores_total %" PRIu64 "\n", snapshot_restores());
    r |= header(o, "agentlab_snapshot_fallbacks_total", "counter",
                "Job VMs that asked for a memory snapshot and booted instead, by reason.");
    for (unsigned i = 0; i < SNAPSHOT_FB_COUNT; i++)
        r |= al_buf_printf(o, "agentlab_snapshot_fallbacks_total{reason=\"%s\"} %" PRIu64 "\n",
                           snapshot_fallback_name((enum snapshot_fallback)i),
                           snapshot_fallbacks((enum snapshot_fallback)i));
    r |= header(o, "agentlab_snapshot_gc_slots_total", "counter",
                "Memory snapshot slots removed as stale, unused or unfinished.");
    r |= al_buf_printf(o, "agentlab_snapshot_gc_slots_total %" PRIu64 "\n", snapshot_gc_slots());
    r |= header(o, "agentlab_snapshot_gc_bytes_total", "counter",
                "Disk bytes freed by removing memory snapshot slots.");
    r |= al_buf_printf(o, "agentlab_snapshot_gc_bytes_total %" PRIu64 "\n", snapshot_gc_bytes());
    r |= header(o, "agentlab_channel_throttled_seconds_total", "counter",
                "Time guests were held back by the channel's rate limit (finished attempts).");
    r |= al_buf_printf(o, "agentlab_channel_throttled_seconds_total %.3f\n",
                       (double)m->throttled_ms / 1000.0);

    r |= header(o, "agentlab_api_connections", "gauge", "Open API connections.");
    r |= al_buf_printf(o, "agentlab_api_connections %u\n", st.connections);
    r |= header(o, "agentlab_api_connections_total", "counter", "API connections accepted.");
    r |= al_buf_printf(o, "agentlab_api_connections_total %" PRIu64 "\n", st.connections_total);
    r |= header(o, "agentlab_api_connections_rejected_total", "counter",
                "API connections refused over the connection limit.");
    r |= al_buf_printf(o, "agentlab_api_connections_rejected_total %" PRIu64 "\n",
                       st.connections_rejected);
    r |= header(o, "agentlab_api_timeouts_total", "counter",
                "API connections closed by a header, body or idle timeout.");
    r |= al_buf_printf(o, "agentlab_api_timeouts_total %" PRIu64 "\n", st.timeouts);
    r |= header(o, "agentlab_api_requests_total", "counter", "API responses by status class.");
    for (int cls = 1; cls <= 5; cls++)
        r |= al_buf_printf(o, "agentlab_api_requests_total{code=\"%dxx\"} %" PRIu64 "\n", cls,
                           st.responses_by_class[cls]);
    return r ? -ENOMEM : 0;
}
