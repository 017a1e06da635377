#include "runner/engine/config.h"

#include <ctype.h>
#include <ini.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/util.h"
#include "runner/engine/config_priv.h"

enum section_kind {
    SEC_AGENT = 0,
    SEC_BACKEND,
    SEC_SOURCE,
    SEC_POOL,
};

static const char *const section_names[] = {"agent", "backend", "source", "pool"};

enum key_type {
    KEY_STRING,
    KEY_PATH,
    KEY_INT,
    KEY_BOOL,
    KEY_DURATION,
    KEY_SIZE,
    KEY_ENUM,
    KEY_LIST,      /* comma-separated names */
    KEY_GLOB_LIST, /* comma-separated fnmatch(3) patterns of names */
    KEY_IMAGE_MAP, /* comma-separated IMAGE:VMID pairs */
};

static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};
static const char *const accel_modes[] = {"auto", "kvm", "tcg", NULL};
static const char *const source_types[] = {"spool", "http", "gitlab", "github", NULL};
/* order of enum gitlab_clone */
static const char *const clone_modes[] = {"host", "guest", "none", NULL};
/* order of enum github_poll */
static const char *const github_poll_modes[] = {"auto", "always", "never", NULL};
/* order of enum github_mode */
static const char *const github_modes[] = {"rest", "scaleset", NULL};

#define T(x)      (1u << (x))
#define ALL_TYPES 0u

struct config_key {
    enum section_kind section;
    unsigned types; /* backend/source types the key applies to; 0 = all */
    const char *name;
    enum key_type type;
    size_t offset;
    const char *def;
    int64_t min, max;
    const char *const *values;
    const char *help;
};

#define A(field) offsetof(struct config_agent, field)
#define B(field) offsetof(struct backend_settings, field)
#define S(field) offsetof(struct config_source, field)
#define P(field) offsetof(struct config_pool, field)

/* Defaults written "@state"/"@run" are relative to the state/run dir. */
static const struct config_key keys[] = {
        /* [agent] */
        {SEC_AGENT, 0, "state_dir", KEY_PATH, A(state_dir), "/var/lib/agentlab", 0, 0, NULL,
         "absolute path of the state directory (database, images, job logs)"},
        {SEC_AGENT, 0, "run_dir", KEY_PATH, A(run_dir), "/run/agentlab", 0, 0, NULL,
         "absolute path of the runtime directory (sockets, per-job run dirs)"},
        {SEC_AGENT, 0, "log_level", KEY_ENUM, A(log_level), "info", 0, 0, log_levels,
         "one of error, warn, info, debug"},
        {SEC_AGENT, 0, "image", KEY_STRING, A(image), "debian-12", 0, 0, NULL,
         "name of the default image"},
        {SEC_AGENT, 0, "pool", KEY_STRING, A(pool), "default", 0, 0, NULL,
         "name of the default pool"},
        {SEC_AGENT, 0, "api_socket", KEY_PATH, A(api_socket), "@run/agentlabd.sock", 0, 0, NULL,
         "absolute path of the control API unix socket"},
        {SEC_AGENT, 0, "api_socket_group", KEY_STRING, A(api_socket_group), "", 0, 0, NULL,
         "group that may use the control socket (empty: root only)"},
        {SEC_AGENT, 0, "api_listen", KEY_STRING, A(api_listen), "", 0, 0, NULL,
         "HOST:PORT of the optional TCP listener (empty: off)"},
        {SEC_AGENT, 0, "api_token_file", KEY_PATH, A(api_token_file), "", 0, 0, NULL,
         "file holding the bearer token the TCP listener requires"},
        {SEC_AGENT, 0, "api_max_connections", KEY_INT, A(api_max_connections), "64", 1, 10000, NULL,
         "open API connections at most, 1 to 10000"},
        {SEC_AGENT, 0, "api_max_header_size", KEY_SIZE, A(api_max_header_bytes), "16K", 1024,
         1 << 20, NULL, "bytes of an API request line and headers, 1K to 1M"},
        {SEC_AGENT, 0, "api_max_upload", KEY_SIZE, A(api_max_upload), "1G", 0, INT64_MAX, NULL,
         "bytes of a work-dir upload (PUT /v1/uploads)"},
        {SEC_AGENT, 0, "api_header_timeout", KEY_DURATION, A(api_header_timeout_s), "10s", 1, 3600,
         NULL, "time a client has to send a request's headers"},
        {SEC_AGENT, 0, "api_idle_timeout", KEY_DURATION, A(api_idle_timeout_s), "60s", 1, 86400,
         NULL, "idle time before an API connection is closed"},
        {SEC_AGENT, 0, "boot_timeout", KEY_DURATION, A(boot_timeout_s), "5m", 1, 86400, NULL,
         "a duration such as 90s, 5m, 1h"},
        {SEC_AGENT, 0, "job_timeout", KEY_DURATION, A(job_timeout_s), "1h", 1, 7 * 86400, NULL,
         "a duration such as 90s, 5m, 1h"},
        {SEC_AGENT, 0, "heartbeat_timeout", KEY_DURATION, A(heartbeat_timeout_s), "30s", 2, 3600,
         NULL, "a duration such as 30s"},
        {SEC_AGENT, 0, "max_attempts", KEY_INT, A(max_attempts), "2", 1, 10, NULL,
         "an integer from 1 to 10"},
        {SEC_AGENT, 0, "retention", KEY_DURATION, A(retention_s), "7d", 60, 3650L * 86400, NULL,
         "a duration such as 7d"},
        {SEC_AGENT, 0, "retention_size", KEY_SIZE, A(retention_bytes), "10G", 1 << 20, INT64_MAX,
         NULL, "a size such as 500M or 10G"},
        {SEC_AGENT, 0, "max_log_size", KEY_SIZE, A(max_log_bytes), "64M", 4096, INT64_MAX, NULL,
         "a size such as 64M"},
        {SEC_AGENT, 0, "max_artifact_size", KEY_SIZE, A(max_artifact_bytes), "1G", 0, INT64_MAX,
         NULL, "a size such as 1G"},
        {SEC_AGENT, 0, "max_artifact_files", KEY_INT, A(max_artifact_files), "10000", 0, 1000000,
         NULL, "an integer from 0 to 1000000"},
        {SEC_AGENT, 0, "job_cpus", KEY_INT, A(job_cpus), "1", 1, 256, NULL,
         "default vCPUs of a job, 1 to 256"},
        {SEC_AGENT, 0, "job_memory", KEY_SIZE, A(job_memory), "1G", 128 << 20, INT64_MAX, NULL,
         "default memory of a job, at least 128M"},
        {SEC_AGENT, 0, "channel_max_frame_size", KEY_SIZE, A(channel_max_frame_bytes), "1M",
         64 << 10, 1 << 20, NULL, "payload bytes of one frame from a guest, 64K to 1M"},
        {SEC_AGENT, 0, "channel_max_bytes_per_s", KEY_SIZE, A(channel_max_bytes_per_s), "32M", 0,
         INT64_MAX, NULL,
         "bytes per second a guest may send on average (then it is slowed down), such as 32M; "
         "0 = unlimited"},
        {SEC_AGENT, 0, "channel_max_frames_per_s", KEY_INT, A(channel_max_frames_per_s), "20000", 0,
         10000000, NULL,
         "frames per second a guest may send on average (then it is slowed down); 0 = unlimited"},
        {SEC_AGENT, 0, "max_disk_size", KEY_SIZE, A(max_disk_bytes), "64G", 1 << 30, INT64_MAX,
         NULL,
         "largest virtual size of a job's disk (resources.disk_gb or the image's), such as "
         "64G"},
        {SEC_AGENT, 0, "api_max_jobs", KEY_INT, A(api_max_jobs), "1000", 1, 1000000, NULL,
         "jobs submitted through the API or CLI that may be queued or running at once"},

        /* [backend "NAME"] */
        {SEC_BACKEND, 0, "type", KEY_ENUM, B(type), "libvirt", 0, 0, backend_type_names,
         "libvirt or proxmox"},
        {SEC_BACKEND, 0, "max_vms", KEY_INT, B(max_vms), "0", 0, 10000, NULL,
         "an integer, 0 = derived from the host"},
        {SEC_BACKEND, 0, "vcpus", KEY_INT, B(vcpus), "0", 0, 100000, NULL,
         "vCPU capacity, 0 = the host's CPU count"},
        {SEC_BACKEND, 0, "memory", KEY_SIZE, B(memory), "0", 0, INT64_MAX, NULL,
         "memory capacity such as 16G, 0 = 80% of the host's memory"},
        {SEC_BACKEND, T(BACKEND_LIBVIRT), "uri", KEY_STRING, B(libvirt.uri), "qemu:///system", 0, 0,
         NULL, "a libvirt connection URI"},
        {SEC_BACKEND, T(BACKEND_LIBVIRT), "inject", KEY_ENUM, B(libvirt.inject), "seed", 0, 0,
         inject_mode_names, "seed or guestfs"},
        {SEC_BACKEND, T(BACKEND_LIBVIRT), "accel", KEY_ENUM, B(libvirt.accel), "auto", 0, 0,
         accel_modes, "auto, kvm or tcg"},
        {SEC_BACKEND, T(BACKEND_LIBVIRT), "boot_watchdog", KEY_DURATION, B(libvirt.boot_watchdog_s),
         "30s", 0, 3600, NULL,
         "a duration: a guest under KVM with no sign of life this long is retried under TCG, 0 = "
         "off"},
        {SEC_BACKEND, T(BACKEND_LIBVIRT), "boot_watchdog_tcg", KEY_DURATION,
         B(libvirt.boot_watchdog_tcg_s), "3m", 0, 86400, NULL,
         "a duration: the same bound under TCG, 0 = off"},
        {SEC_BACKEND, T(BACKEND_LIBVIRT), "emulator", KEY_PATH, B(libvirt.emulator), "", 0, 0, NULL,
         "the QEMU binary of the VMs (empty: libvirt's default)"},
        {SEC_BACKEND, T(BACKEND_LIBVIRT), "network", KEY_STRING, B(libvirt.network), "", 0, 0, NULL,
         "libvirt network to attach (empty: no NIC)"},
        {SEC_BACKEND, T(BACKEND_LIBVIRT), "storage_pool", KEY_STRING, B(libvirt.storage_pool), "",
         0, 0, NULL,
         "libvirt storage pool for overlays (empty: agentlab-NAME-HASH, HASH of the state dir)"},
        {SEC_BACKEND, T(BACKEND_LIBVIRT), "transport", KEY_ENUM, B(libvirt.transport), "auto", 0, 0,
         libvirt_transport_names, "auto (remote for a remote URI), local or remote"},
        {SEC_BACKEND, T(BACKEND_PROXMOX), "url", KEY_STRING, B(proxmox.url), "", 0, 0, NULL,
         "https://HOST:8006"},
        {SEC_BACKEND, T(BACKEND_PROXMOX), "token_file", KEY_PATH, B(proxmox.token_file), "", 0, 0,
         NULL, "file holding USER@REALM!TOKENID=SECRET"},
        {SEC_BACKEND, T(BACKEND_PROXMOX), "user", KEY_STRING, B(proxmox.user), "", 0, 0, NULL,
         "USER@REALM for ticket auth (instead of token_file)"},
        {SEC_BACKEND, T(BACKEND_PROXMOX), "password_file", KEY_PATH, B(proxmox.password_file), "",
         0, 0, NULL, "file holding the password for ticket auth"},
        {SEC_BACKEND, T(BACKEND_PROXMOX), "ca_file", KEY_PATH, B(proxmox.ca_file), "", 0, 0, NULL,
         "PEM CA bundle for the API certificate"},
        {SEC_BACKEND, T(BACKEND_PROXMOX), "fingerprint", KEY_STRING, B(proxmox.fingerprint), "", 0,
         0, NULL, "SHA-256 certificate fingerprint, AA:BB:..."},
        {SEC_BACKEND, T(BACKEND_PROXMOX), "node", KEY_STRING, B(proxmox.node), "", 0, 0, NULL,
         "comma-separated nodes to place VMs on (empty: any online node)"},
        {SEC_BACKEND, T(BACKEND_PROXMOX), "pool", KEY_STRING, B(proxmox.pool), "", 0, 0, NULL,
         "Proxmox resource pool"},
        {SEC_BACKEND, T(BACKEND_PROXMOX), "template", KEY_STRING, B(proxmox.template_vm), "", 0, 0,
         NULL, "template VMID or name"},
        {SEC_BACKEND, T(BACKEND_PROXMOX), "templates", KEY_IMAGE_MAP, B(proxmox.templates), "", 0,
         0, NULL,
         "comma-separated IMAGE:VMID pairs: the template of each image (template serves the "
         "default image)"},
        {SEC_BACKEND, T(BACKEND_PROXMOX), "storage", KEY_STRING, B(proxmox.storage), "", 0, 0, NULL,
         "target storage for full clones"},
        {SEC_BACKEND, T(BACKEND_PROXMOX), "bridge", KEY_STRING, B(proxmox.bridge), "", 0, 0, NULL,
         "bridge for the VM's NIC (empty: none)"},
        {SEC_BACKEND, T(BACKEND_PROXMOX), "full_clone", KEY_BOOL, B(proxmox.full_clone), "no", 0, 0,
         NULL, "yes or no"},
        {SEC_BACKEND, T(BACKEND_PROXMOX), "ciuser", KEY_STRING, B(proxmox.ciuser), "", 0, 0, NULL,
         "cloud-init user set on each clone (empty: the template's)"},
        {SEC_BACKEND, T(BACKEND_PROXMOX), "sshkeys_file", KEY_PATH, B(proxmox.sshkeys_file), "", 0,
         0, NULL, "OpenSSH public keys set on each clone through cloud-init"},

        /* [source "NAME"] */
        {SEC_SOURCE, 0, "type", KEY_ENUM, S(type), "spool", 0, 0, source_types,
         "spool, http, gitlab or github"},
        {SEC_SOURCE, 0, "pool", KEY_STRING, S(pool), "", 0, 0, NULL,
         "pool the source's jobs run in (empty: routed among every pool); same as a one-pool "
         "pools"},
        {SEC_SOURCE, 0, "pools", KEY_LIST, S(pools), "", 0, 0, NULL,
         "comma-separated pools the source's jobs are routed among (empty: every pool)"},
        {SEC_SOURCE, T(SOURCE_SPOOL), "dir", KEY_PATH, S(dir), "@state/spool", 0, 0, NULL,
         "absolute path of the spool directory"},
        {SEC_SOURCE, T(SOURCE_HTTP) | T(SOURCE_GITLAB) | T(SOURCE_GITHUB), "url", KEY_STRING,
         S(url), "", 0, 0, NULL, "base URL"},
        {SEC_SOURCE, T(SOURCE_HTTP) | T(SOURCE_GITLAB) | T(SOURCE_GITHUB), "token_file", KEY_PATH,
         S(token_file), "", 0, 0, NULL, "file holding the token"},
        {SEC_SOURCE, T(SOURCE_GITLAB) | T(SOURCE_GITHUB), "labels", KEY_LIST, S(labels), "", 0, 0,
         NULL, "comma-separated labels"},
        {SEC_SOURCE, 0, "concurrent", KEY_INT, S(concurrent), "4", 1, 10000, NULL,
         "jobs of this source queued or running at once, 1 to 10000; more wait at the source"},
        {SEC_SOURCE, 0, "poll_interval", KEY_DURATION, S(poll_interval_s), "5s", 1, 3600, NULL,
         "a duration such as 5s"},
        {SEC_SOURCE, T(SOURCE_GITLAB), "clone", KEY_ENUM, S(clone), "host", 0, 0, clone_modes,
         "where the commit is checked out: host (agentlabd; the job token stays out of the VM), "
         "guest (the VM needs a network) or none"},
        {SEC_SOURCE, T(SOURCE_GITLAB), "output_limit", KEY_SIZE, S(output_limit), "4M", 4096,
         INT64_MAX, NULL, "bytes of a job's log sent to GitLab, such as 4M"},
        {SEC_SOURCE, T(SOURCE_GITLAB), "max_checkout_size", KEY_SIZE, S(max_checkout_bytes), "2G",
         1 << 20, INT64_MAX, NULL, "size cap of a host-side checkout, such as 2G"},
        {SEC_SOURCE, T(SOURCE_GITLAB), "cache_dir", KEY_PATH, S(cache_dir), "", 0, 0, NULL,
         "directory of the jobs' caches, may be shared by hosts (empty: "
         "state_dir/gitlab-cache/NAME)"},
        {SEC_SOURCE, T(SOURCE_GITLAB), "cache_max_size", KEY_SIZE, S(cache_max_bytes), "10G", 0,
         INT64_MAX, NULL,
         "size cap of the cache store, least recently used archives go first; 0 = no cache"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "repo", KEY_STRING, S(repo), "", 0, 0, NULL,
         "OWNER/NAME of the repository the runners serve (or org)"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "org", KEY_STRING, S(org), "", 0, 0, NULL,
         "organisation the runners serve (or repo)"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "repos", KEY_LIST, S(repos), "", 0, 0, NULL,
         "org: comma-separated repository names the polling fallback looks at"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "app_id", KEY_STRING, S(app_id), "", 0, 0, NULL,
         "GitHub App id or client id (empty: token_file holds a fine-grained token)"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "app_key_file", KEY_PATH, S(app_key_file), "", 0, 0, NULL,
         "the GitHub App's private key (PEM)"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "installation_id", KEY_STRING, S(installation_id), "", 0, 0,
         NULL, "the App's installation id (empty: looked up for repo or org)"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "runner_group_id", KEY_INT, S(runner_group_id), "1", 1,
         INT32_MAX, NULL, "runner group of the runners (1: Default)"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "max_runners", KEY_INT, S(max_runners), "4", 1, 10000, NULL,
         "runners (one VM each) of this source at once, 1 to 10000"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "webhook_listen", KEY_STRING, S(webhook_listen), "", 0, 0,
         NULL, "HOST:PORT of the workflow_job webhook listener (empty: off)"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "webhook_secret_file", KEY_PATH, S(webhook_secret_file), "",
         0, 0, NULL, "file holding the webhook secret"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "webhook_max_body", KEY_SIZE, S(webhook_max_body), "1M",
         1024, 25 << 20, NULL, "bytes of one webhook delivery, 1K to 25M"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "poll", KEY_ENUM, S(poll), "auto", 0, 0, github_poll_modes,
         "auto (every poll_interval without a webhook listener, every minute with one), "
         "always or never"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "runner_dir", KEY_STRING, S(runner_dir),
         "/opt/actions-runner", 0, 0, NULL, "the actions runner's directory in the image"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "runner_idle_timeout", KEY_DURATION,
         S(runner_idle_timeout_s), "5m", 10, 86400, NULL,
         "a runner that took no job by then is removed with its VM, such as 5m"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "mode", KEY_ENUM, S(github_mode), "rest", 0, 0, github_modes,
         "rest (webhooks and/or REST polling) or scaleset (a runner scale set: one outbound long "
         "poll)"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "enterprise", KEY_STRING, S(enterprise), "", 0, 0, NULL,
         "scaleset: enterprise the scale set serves (or org, or repo; token_file auth only)"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "github_url", KEY_STRING, S(github_url), "", 0, 0, NULL,
         "scaleset: GitHub's web URL such as https://github.com (empty: derived from url)"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "scale_set_name", KEY_STRING, S(scale_set_name), "", 0, 0,
         NULL, "scaleset: the scale set's name, what workflows put in runs-on"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "runner_group", KEY_STRING, S(runner_group), "default", 0, 0,
         NULL, "scaleset: runner group of the scale set (default: the Default group)"},
        {SEC_SOURCE, T(SOURCE_GITHUB), "min_runners", KEY_INT, S(min_runners), "0", 0, 10000, NULL,
         "scaleset: idle registered runners (one VM each) kept warm, 0 to 10000"},

        /* [pool "NAME"] */
        {SEC_POOL, 0, "backends", KEY_LIST, P(backends), "", 0, 0, NULL,
         "comma-separated backend names, tried in order"},
        {SEC_POOL, 0, "labels", KEY_LIST, P(labels), "", 0, 0, NULL,
         "comma-separated labels a job must all carry to be routed here (empty: any job)"},
        {SEC_POOL, 0, "image", KEY_STRING, P(image), "", 0, 0, NULL,
         "image of the pool's jobs and warm VMs (empty: [agent] image)"},
        {SEC_POOL, 0, "cpus", KEY_INT, P(conf.cpus), "0", 0, 256, NULL,
         "vCPUs of the pool's jobs and warm VMs, 1 to 256 (0: [agent] job_cpus)"},
        {SEC_POOL, 0, "memory", KEY_SIZE, P(conf.memory), "0", 0, INT64_MAX, NULL,
         "memory of the pool's jobs and warm VMs, at least 128M (0: [agent] job_memory)"},
        {SEC_POOL, 0, "disk", KEY_SIZE, P(disk), "0", 0, INT64_MAX, NULL,
         "disk size of the pool's jobs in whole GiB such as 20G (0: the image's size)"},
        {SEC_POOL, 0, "max_cpus", KEY_INT, P(conf.max_cpus), "0", 0, 256, NULL,
         "most vCPUs a job of the pool may ask for (0: the pool's cpus when it sets cpus, else "
         "no bound but the backends')"},
        {SEC_POOL, 0, "max_memory", KEY_SIZE, P(conf.max_memory), "0", 0, INT64_MAX, NULL,
         "most memory a job of the pool may ask for (0: the pool's memory when it sets memory, "
         "else no bound but the backends')"},
        {SEC_POOL, 0, "allowed_images", KEY_GLOB_LIST, P(allowed_images), "", 0, 0, NULL,
         "comma-separated image name patterns (fnmatch) a job of the pool may ask for (empty: "
         "the pool's image when it sets image, else any)"},
        {SEC_POOL, 0, "warm", KEY_INT, P(warm), "0", 0, 1000, NULL,
         "number of booted VMs kept waiting, 0 to 1000"},
        {SEC_POOL, 0, "warm_max_idle", KEY_DURATION, P(warm_max_idle_s), "1h", 10, 7 * 86400, NULL,
         "a duration such as 1h"},
        {SEC_POOL, 0, "warm_peak", KEY_INT, P(warm_peak), "0", 0, 1000, NULL,
         "warm VMs during peak hours (Monday to Friday), 0 to 1000; 0 = no peak"},
        {SEC_POOL, 0, "warm_peak_start", KEY_INT, P(warm_peak_start), "8", 0, 23, NULL,
         "first hour of the peak, 0 to 23 (local time)"},
        {SEC_POOL, 0, "warm_peak_end", KEY_INT, P(warm_peak_end), "18", 1, 24, NULL,
         "hour the peak ends, 1 to 24 (local time)"},
        {SEC_POOL, 0, "start", KEY_ENUM, P(start), "boot", 0, 0, vm_start_names,
         "boot, snapshot or auto"},

};

static const char *enum_to_string(const char *const *values, int v)
{
    for (int i = 0; values[i]; i++) {
        if (i == v)
            return values[i];
    }
    return "?";
}

const char *source_type_to_string(int type)
{
    return enum_to_string(source_types, type);
}

static char **list_parse(const char *s)
{
    size_t n = 0;
    char **v = calloc(1, sizeof(char *));
    if (!v)
        return NULL;
    const char *p = s;
    while (*p) {
        while (*p == ',' || isspace((unsigned char)*p))
            p++;
        if (!*p)
            break;
        const char *start = p;
        while (*p && *p != ',')
            p++;
        const char *end = p;
        while (end > start && isspace((unsigned char)end[-1]))
            end--;
        char **g = realloc(v, (n + 2) * sizeof(char *));
        if (!g) {
            strv_free(v);
            return NULL;
        }
        v = g;
        v[n] = strndup(start, (size_t)(end - start));
        if (!v[n]) {
            strv_free(v);
            return NULL;
        }
        v[++n] = NULL;
    }
    return v;
}

/* Parses value for key into the struct at base. Returns 0 or -EINVAL/-ERANGE. */
static int key_set(const struct config_key *k, void *base, const char *value)
{
    char *field = (char *)base + k->offset;
    switch (k->type) {
    case KEY_STRING:
    case KEY_PATH: {
        if (k->type == KEY_PATH && value[0] && value[0] != '/' && value[0] != '@')
            return -EINVAL;
        char *s = strdup(value);
        if (!s)
            return -ENOMEM;
        free(*(char **)field);
        *(char **)field = s;
        return 0;
    }
    case KEY_INT: {
        int v;
        int r = al_parse_int(value, (int)k->min, (int)k->max, &v);
        if (r < 0)
            return r;
        *(int *)field = v;
        return 0;
    }
    case KEY_BOOL:
        return al_parse_bool(value, (bool *)field);
    case KEY_DURATION: {
        int64_t v;
        int r = al_parse_duration(value, &v);
        if (r < 0)
            return r;
        if (v < k->min || v > k->max)
            return -ERANGE;
        *(int64_t *)field = v;
        return 0;
    }
    case KEY_SIZE: {
        uint64_t v;
        int r = al_parse_size(value, &v);
        if (r < 0)
            return r;
        if (v < (uint64_t)k->min || v > (uint64_t)k->max)
            return -ERANGE;
        *(uint64_t *)field = v;
        return 0;
    }
    case KEY_ENUM:
        for (int i = 0; k->values[i]; i++) {
            if (streq(value, k->values[i])) {
                *(int *)field = i;
                return 0;
            }
        }
        return -EINVAL;
    case KEY_LIST:
    case KEY_GLOB_LIST:
    case KEY_IMAGE_MAP: {
        char **v = list_parse(value);
        if (!v)
            return -ENOMEM;
        for (char **s = v; *s; s++) {
            bool ok = k->type == KEY_LIST        ? config_name_is_valid(*s)
                      : k->type == KEY_GLOB_LIST ? config_glob_is_valid(*s)
                                                 : image_map_entry_parse(*s, NULL, 0, NULL);
            if (!ok) {
                strv_free(v);
                return -EINVAL;
            }
        }
        strv_free(*(char ***)field);
        *(char ***)field = v;
        return 0;
    }
    }
    return -EINVAL;
}

static void key_free(const struct config_key *k, void *base)
{
    char *field = (char *)base + k->offset;
    if (k->type == KEY_STRING || k->type == KEY_PATH) {
        free(*(char **)field);
        *(char **)field = NULL;
    } else if (k->type == KEY_LIST || k->type == KEY_GLOB_LIST || k->type == KEY_IMAGE_MAP) {
        strv_free(*(char ***)field);
        *(char ***)field = NULL;
    }
}

static bool key_applies(const struct config_key *k, enum section_kind sec, int type)
{
    return k->section == sec && (k->types == ALL_TYPES || (k->types & T((unsigned)type)));
}

static int section_defaults(enum section_kind sec, void *base)
{
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        if (keys[i].section == sec) {
            int r = key_set(&keys[i], base, keys[i].def);
            if (r < 0)
                return r;
        }
    }
    return 0;
}

static void section_free(enum section_kind sec, void *base)
{
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        if (keys[i].section == sec)
            key_free(&keys[i], base);
    }
}

/* ---- parsing ---- */

struct raw_entry {
    char *name;
    char *value;
    int line;
};

struct raw_section {
    enum section_kind kind;
    char *name; /* NULL for [agent] */
    int line;
    struct raw_entry *entries;
    size_t n_entries;
};

struct parse_state {
    const char *file;
    const char *text;
    size_t len;
    size_t pos;
    int line;
    struct raw_section *sections;
    size_t n_sections;
    /* 1 + index of the section the reader last saw a header of, 0 before
     * any: inih hands the handler section names cut at 50 bytes, too short
     * for [source "<63-byte name>"], so keys are filed by this instead */
    size_t cur_section;
    /* the value of a line longer than libinih reads, for the handler of
     * that line (long_value_line) */
    char *long_value;
    int long_value_line;
    bool after_key; /* a key line since the last header: see reader() */
    char *error;
    int error_line;
};

static int parse_error(struct parse_state *st, const char *fmt, ...) _printf_(2, 3);
static struct raw_section *section_get(struct parse_state *st, const char *header);

/* Where libinih ends a key or value: at one of chars, a ';' after a space
 * (an inline comment, as this libinih is built) or the end. */
static const char *find_chars_or_comment(const char *s, const char *end, const char *chars)
{
    bool was_space = false;
    while (s < end && !(chars && strchr(chars, *s)) && !(was_space && *s == ';')) {
        was_space = isspace((unsigned char)*s);
        s++;
    }
    return s;
}

/* A line too long for libinih's buffer, [line, line + len) without its
 * newline: a comment becomes "#", "key = value" becomes "key = x" with the
 * value (split and trimmed as libinih does) kept for the handler. Writes the
 * short line to str (num bytes); returns false after parse_error(). */
static bool shorten_long_line(struct parse_state *st, const char *line, size_t len, char *str,
                              int num)
{
    const char *end = line + len;
    while (end > line && isspace((unsigned char)end[-1]))
        end--;
    const char *start = line;
    while (start < end && isspace((unsigned char)*start))
        start++;
    if (len > AL_CONFIG_MAX_LINE ||
        (start > line && start < end && *start != '#' && *start != ';')) {
        /* indented: a continuation line to libinih; config show writes none */
        parse_error(st, "line longer than %d characters",
                    len > AL_CONFIG_MAX_LINE ? AL_CONFIG_MAX_LINE : num - 2);
        return false;
    }
    if (start < end && (*start == '#' || *start == ';')) {
        snprintf(str, (size_t)num, "#\n");
        return true;
    }
    const char *sep = find_chars_or_comment(start, end, "=:");
    if (sep == end || (*sep != '=' && *sep != ':')) {
        parse_error(st, "syntax error: expected [section] or key = value");
        return false;
    }
    const char *key_end = sep;
    while (key_end > start && isspace((unsigned char)key_end[-1]))
        key_end--;
    const char *v = sep + 1;
    const char *v_end = find_chars_or_comment(v, end, NULL);
    while (v < v_end && isspace((unsigned char)*v))
        v++;
    while (v_end > v && isspace((unsigned char)v_end[-1]))
        v_end--;
    int n = snprintf(str, (size_t)num, "%.*s = x\n", (int)(key_end - start), start);
    if (n < 0 || n >= num) {
        parse_error(st, "line longer than %d characters with a key of %zu", num - 2,
                    (size_t)(key_end - start));
        return false;
    }
    free(st->long_value);
    st->long_value = strndup(v, (size_t)(v_end - v));
    st->long_value_line = st->line;
    if (!st->long_value) {
        parse_error(st, "out of memory");
        return false;
    }
    return true;
}

static char *reader(char *str, int num, void *stream)
{
    struct parse_state *st = stream;
    if (st->pos >= st->len || num <= 1)
        return NULL;
    const char *line = st->text + st->pos;
    const char *nl = memchr(line, '\n', st->len - st->pos);
    size_t line_len = nl ? (size_t)(nl - line) : st->len - st->pos;
    st->line++;
    if (memchr(line, '\0', line_len)) {
        parse_error(st, "NUL byte in line");
        return NULL;
    }
    st->pos += line_len + (nl ? 1 : 0);
    size_t i = line_len + (nl ? 1 : 0);
    if (i > (size_t)num - 1) {
        /* libinih would read the rest as a line of its own */
        if (!shorten_long_line(st, line, line_len, str, num))
            return NULL;
        st->after_key |= str[0] != '#';
        return str;
    }
    memcpy(str, line, i);
    str[i] = '\0';
    /* This libinih reports sections only with their first key: register the
     * header here so an empty [backend "x"] still defines x. */
    const char *p = str;
    while (*p == ' ' || *p == '\t')
        p++;
    bool content = *p && *p != '\r' && *p != '\n' && *p != '#' && *p != ';';
    if (content && p > str && st->after_key) {
        /* libinih: a continuation of the value above, inline comment kept */
        parse_error(st, "indented line continues the value above: write each key = value "
                        "on one line");
        return NULL;
    }
    const char *close = *p == '[' ? strchr(p, ']') : NULL;
    if (content)
        st->after_key = !close;
    if (close) {
        _cleanup_free_ char *header = strndup(p + 1, (size_t)(close - p - 1));
        struct raw_section *sec = header ? section_get(st, header) : NULL;
        if (!sec) {
            parse_error(st, "bad section [%s]", header ? header : "");
            return NULL;
        }
        st->cur_section = (size_t)(sec - st->sections) + 1;
    }
    return str;
}

static int parse_error(struct parse_state *st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (al_first_vformat(&st->error, fmt, ap))
        st->error_line = st->line;
    va_end(ap);
    return 0; /* makes inih stop and report this line */
}

/* Splits 'backend "name"' into kind and name. */
static int split_header(struct parse_state *st, const char *header, enum section_kind *ret_kind,
                        char **ret_name)
{
    const char *sp = strchr(header, ' ');
    size_t klen = sp ? (size_t)(sp - header) : strlen(header);
    for (size_t i = 0; i < ARRAY_SIZE(section_names); i++) {
        if (strlen(section_names[i]) != klen || strncmp(header, section_names[i], klen) != 0)
            continue;
        if (i == SEC_AGENT) {
            if (sp)
                return parse_error(st, "section [agent] takes no name"), -EINVAL;
            *ret_kind = SEC_AGENT;
            *ret_name = NULL;
            return 0;
        }
        const char *q = sp ? sp + 1 : NULL;
        while (q && *q == ' ')
            q++;
        size_t qlen = q ? strlen(q) : 0;
        if (!q || qlen < 3 || q[0] != '"' || q[qlen - 1] != '"')
            return parse_error(st, "section [%s] needs a quoted name, e.g. [%s \"local\"]",
                               section_names[i], section_names[i]),
                   -EINVAL;
        char *name = strndup(q + 1, qlen - 2);
        if (!name)
            return -ENOMEM;
        if (!config_name_is_valid(name)) {
            parse_error(st, "invalid %s name \"%s\": use letters, digits, '.', '_', '-'",
                        section_names[i], name);
            free(name);
            return -EINVAL;
        }
        *ret_kind = (enum section_kind)i;
        *ret_name = name;
        return 0;
    }
    return parse_error(st, "unknown section [%s]; expected agent, backend, source or pool", header),
           -EINVAL;
}

static struct raw_section *section_get(struct parse_state *st, const char *header)
{
    enum section_kind kind;
    char *name = NULL;
    if (split_header(st, header, &kind, &name) < 0)
        return NULL;
    for (size_t i = 0; i < st->n_sections; i++) {
        struct raw_section *s = &st->sections[i];
        if (s->kind == kind && ((!s->name && !name) || (s->name && name && streq(s->name, name)))) {
            free(name);
            return s;
        }
    }
    if (st->n_sections >= AL_CONFIG_MAX_SECTIONS) {
        free(name);
        parse_error(st, "too many sections (limit %d)", AL_CONFIG_MAX_SECTIONS);
        return NULL;
    }
    struct raw_section *g = realloc(st->sections, (st->n_sections + 1) * sizeof(*g));
    if (!g) {
        free(name);
        return NULL;
    }
    st->sections = g;
    struct raw_section *s = &g[st->n_sections++];
    *s = (struct raw_section){.kind = kind, .name = name, .line = st->line};
    return s;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
    struct parse_state *st = user;
    if (!name) /* a bare section header (inih with INI_CALL_HANDLER_ON_NEW_SECTION) */
        return 1;
    if (!section || !*section || !st->cur_section)
        return parse_error(st, "key \"%s\" outside of any section", name);
    struct raw_section *s = &st->sections[st->cur_section - 1];
    struct raw_entry *g = realloc(s->entries, (s->n_entries + 1) * sizeof(*g));
    if (!g)
        return parse_error(st, "out of memory");
    s->entries = g;
    struct raw_entry *e = &g[s->n_entries];
    if (st->long_value && st->long_value_line == st->line)
        value = st->long_value;
    if (value && strlen(value) > AL_CONFIG_MAX_VALUE)
        return parse_error(st, "the value of \"%s\" is longer than %d bytes", name,
                           AL_CONFIG_MAX_VALUE);
    if (value && value[0] == ';') /* "key = ;x" would read back as a comment */
        return parse_error(st, "the value of \"%s\" begins with ';'", name);
    e->name = strdup(name);
    e->value = strdup(value ? value : "");
    e->line = st->line;
    if (!e->name || !e->value) {
        free(e->name);
        free(e->value);
        return parse_error(st, "out of memory");
    }
    s->n_entries++;
    return 1;
}

static void parse_state_free(struct parse_state *st)
{
    for (size_t i = 0; i < st->n_sections; i++) {
        struct raw_section *s = &st->sections[i];
        for (size_t j = 0; j < s->n_entries; j++) {
            free(s->entries[j].name);
            free(s->entries[j].value);
        }
        free(s->entries);
        free(s->name);
    }
    free(st->sections);
    free(st->long_value);
    free(st->error);
}

/* Applies a raw section's entries onto base, "type" first (it decides keys). */
static int apply_section(const char *file, const struct raw_section *s, void *base,
                         struct al_error **err)
{
    int type = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (size_t j = 0; j < s->n_entries; j++) {
            const struct raw_entry *e = &s->entries[j];
            bool is_type = streq(e->name, "type");
            if ((pass == 0) != is_type)
                continue;
            const struct config_key *k = NULL;
            bool known_elsewhere = false;
            for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
                if (keys[i].section != s->kind || !streq(keys[i].name, e->name))
                    continue;
                if (key_applies(&keys[i], s->kind, type))
                    k = &keys[i];
                else
                    known_elsewhere = true;
            }
            const char *secname = section_names[s->kind];
            if (!k && known_elsewhere)
                return al_error_set(err, EINVAL, "%s:%d: key \"%s\" does not apply to %s type %s",
                                    file, e->line, e->name, secname,
                                    s->kind == SEC_BACKEND ? backend_type_to_string(type)
                                                           : source_type_to_string(type));
            if (!k)
                return al_error_set(err, EINVAL, "%s:%d: unknown key \"%s\" in [%s%s%s%s]", file,
                                    e->line, e->name, secname, s->name ? " \"" : "",
                                    s->name ? s->name : "", s->name ? "\"" : "");
            int r = key_set(k, base, e->value);
            if (r == -ENOMEM)
                return al_error_set(err, ENOMEM, "%s:%d: out of memory", file, e->line);
            if (r < 0)
                return al_error_set(err, EINVAL,
                                    "%s:%d: bad value \"%s\" for key \"%s\": expected %s", file,
                                    e->line, e->value, e->name, k->help);
            if (is_type)
                type = *(int *)((char *)base + k->offset);
        }
    }
    return 0;
}

/* Appends a zeroed element to the array *arr of *n; returns it or NULL. */
static void *grow(void **arr, size_t *n, size_t elem)
{
    char *g = realloc(*arr, (*n + 1) * elem);
    if (!g)
        return NULL;
    memset(g + *n * elem, 0, elem);
    *arr = g;
    return g + (*n)++ * elem;
}

/* A section's struct starts with its name: sections are filled by kind. */
_Static_assert(offsetof(struct backend_settings, name) == 0, "name first");
_Static_assert(offsetof(struct config_source, name) == 0, "name first");
_Static_assert(offsetof(struct config_pool, name) == 0, "name first");

static int expand_dir(char **field, const char *state_dir, const char *run_dir)
{
    const char *v = *field;
    const char *base = NULL;
    size_t skip = 0;
    if (strncmp(v, "@state", 6) == 0) {
        base = state_dir;
        skip = 6;
    } else if (strncmp(v, "@run", 4) == 0) {
        base = run_dir;
        skip = 4;
    }
    if (!base)
        return 0;
    char *s = NULL;
    if (asprintf(&s, "%s%s", base, v + skip) < 0)
        return -ENOMEM;
    free(*field);
    *field = s;
    return 0;
}

static int finish(struct config *c, const char *file, struct al_error **err)
{
    const char *env_state = getenv("AGENTLAB_STATE_DIR");
    const char *env_run = getenv("AGENTLAB_RUN_DIR");
    struct {
        const char *env;
        const char *var;
        char **field;
    } overrides[] = {
            {env_state, "AGENTLAB_STATE_DIR", &c->agent.state_dir},
            {env_run, "AGENTLAB_RUN_DIR", &c->agent.run_dir},
    };
    for (size_t i = 0; i < ARRAY_SIZE(overrides); i++) {
        if (!overrides[i].env || !*overrides[i].env)
            continue;
        if (overrides[i].env[0] != '/')
            return al_error_set(err, EINVAL, "%s must be an absolute path, got \"%s\"",
                                overrides[i].var, overrides[i].env);
        char *s = strdup(overrides[i].env);
        if (!s)
            return al_error_set(err, ENOMEM, "out of memory");
        free(*overrides[i].field);
        *overrides[i].field = s;
    }
    const char *sd = c->agent.state_dir, *rd = c->agent.run_dir;
    if (sd[0] != '/' || rd[0] != '/')
        return al_error_set(err, EINVAL, "%s: state_dir and run_dir must be absolute paths", file);

    /* both name things other sections and job specs refer to (the default
     * pool is even created under this name when none is defined) */
    if (!config_name_is_valid(c->agent.pool))
        return al_error_set(err, EINVAL,
                            "%s: bad value \"%s\" for key \"pool\": expected a name of "
                            "letters, digits, '.', '_', '-'",
                            file, c->agent.pool);
    if (!config_name_is_valid(c->agent.image))
        return al_error_set(err, EINVAL,
                            "%s: bad value \"%s\" for key \"image\": expected a name of "
                            "letters, digits, '.', '_', '-'",
                            file, c->agent.image);
    if (expand_dir(&c->agent.api_socket, sd, rd) < 0)
        return al_error_set(err, ENOMEM, "out of memory");
    for (size_t i = 0; i < c->n_sources; i++) {
        if (expand_dir(&c->sources[i].dir, sd, rd) < 0 ||
            (c->sources[i].cache_dir && expand_dir(&c->sources[i].cache_dir, sd, rd) < 0))
            return al_error_set(err, ENOMEM, "out of memory");
    }

    /* Built-in backend and pool when the file names none. */
    if (c->n_backends == 0) {
        if (!grow((void **)&c->backends, &c->n_backends, sizeof(*c->backends)) ||
            section_defaults(SEC_BACKEND, &c->backends[0]) < 0 ||
            !(c->backends[0].name = strdup("local")))
            return al_error_set(err, ENOMEM, "out of memory");
    }
    if (c->n_pools == 0) {
        if (!grow((void **)&c->pools, &c->n_pools, sizeof(*c->pools)) ||
            section_defaults(SEC_POOL, &c->pools[0]) < 0 ||
            !(c->pools[0].name = strdup(c->agent.pool)))
            return al_error_set(err, ENOMEM, "out of memory");
    }

    int r = config_backends_check(c, file, err);
    if (r < 0)
        return r;
    for (size_t i = 0; i < c->n_pools; i++) {
        struct config_pool *p = &c->pools[i];
        for (char **s = p->backends; s && *s; s++) {
            if (!config_find_backend(c, *s))
                return al_error_set(err, EINVAL, "%s: pool \"%s\" names unknown backend \"%s\"",
                                    file, p->name, *s);
        }
        r = config_pool_resolve(c, p, file, err);
        if (r < 0)
            return r;
    }
    if (!config_find_pool(c, c->agent.pool))
        return al_error_set(err, EINVAL, "%s: the default pool \"%s\" is not defined", file,
                            c->agent.pool);
    for (size_t i = 0; i < c->n_sources; i++) {
        struct config_source *s = &c->sources[i];
        r = config_source_pools_resolve(c, s, file, err);
        if (r < 0)
            return r;
        /* github: empty means https://api.github.com */
        if (s->type != SOURCE_SPOOL && s->type != SOURCE_GITHUB && !*s->url)
            return al_error_set(err, EINVAL, "%s: source \"%s\" of type %s needs a url", file,
                                s->name, source_type_to_string(s->type));
    }
    return 0;
}

int config_load_string(const char *text, size_t len, const char *name, struct config **ret,
                       struct al_error **err)
{
    _cleanup_config_ struct config *c = calloc(1, sizeof(*c));
    if (!c)
        return al_error_set(err, ENOMEM, "out of memory");
    if (section_defaults(SEC_AGENT, &c->agent) < 0)
        return al_error_set(err, ENOMEM, "out of memory");

    struct parse_state st = {.file = name, .text = text, .len = len};
    int line = ini_parse_stream(reader, &st, handler, &st);
    int r = 0;
    if (line != 0 || st.error) {
        if (st.error)
            r = al_error_set(err, EINVAL, "%s:%d: %s", name, st.error_line, st.error);
        else
            r = al_error_set(err, EINVAL, "%s:%d: syntax error: expected [section] or key = value",
                             name, line > 0 ? line : st.line);
        parse_state_free(&st);
        return r;
    }

    /* [agent] first: other sections' defaults depend on it. */
    for (size_t i = 0; i < st.n_sections && r == 0; i++) {
        if (st.sections[i].kind == SEC_AGENT)
            r = apply_section(name, &st.sections[i], &c->agent, err);
    }
    for (size_t i = 0; i < st.n_sections && r == 0; i++) {
        struct raw_section *s = &st.sections[i];
        void *base;
        if (s->kind == SEC_BACKEND)
            base = grow((void **)&c->backends, &c->n_backends, sizeof(*c->backends));
        else if (s->kind == SEC_SOURCE)
            base = grow((void **)&c->sources, &c->n_sources, sizeof(*c->sources));
        else if (s->kind == SEC_POOL)
            base = grow((void **)&c->pools, &c->n_pools, sizeof(*c->pools));
        else
            continue;
        char **namefield = base;
        if (!base || section_defaults(s->kind, base) < 0 || !(*namefield = strdup(s->name))) {
            r = al_error_set(err, ENOMEM, "out of memory");
            break;
        }
        r = apply_section(name, s, base, err);
    }
    parse_state_free(&st);
    if (r < 0)
        return r;
    r = finish(c, name, err);
    if (r < 0)
        return r;
    *ret = TAKE_PTR(c);
    return 0;
}

int config_load(const char *path, struct config **ret, struct al_error **err)
{
    bool optional = false;
    if (!path) {
        path = getenv("AGENTLAB_CONFIG");
        if (!path || !*path) {
            path = AL_CONFIG_DEFAULT_PATH;
            optional = true;
        }
    }
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    struct al_error *rerr = NULL;
    int r = al_read_file(path, AL_CONFIG_MAX_BYTES, &text, &len, &rerr);
    if (r == -ENOENT && optional) {
        al_error_free(rerr);
        return config_load_string("", 0, "(built-in defaults)", ret, err);
    }
    if (r < 0) {
        al_error_move(err, &rerr);
        return al_error_wrap(err, "reading configuration");
    }
    struct config *c = NULL;
    r = config_load_string(text, len, path, &c, err);
    if (r < 0)
        return r;
    c->path = strdup(path);
    *ret = c;
    return 0;
}

struct config *config_free(struct config *c)
{
    if (!c)
        return NULL;
    section_free(SEC_AGENT, &c->agent);
    for (size_t i = 0; i < c->n_backends; i++) {
        section_free(SEC_BACKEND, &c->backends[i]);
        free(c->backends[i].name);
    }
    for (size_t i = 0; i < c->n_sources; i++) {
        section_free(SEC_SOURCE, &c->sources[i]);
        free(c->sources[i].name);
    }
    for (size_t i = 0; i < c->n_pools; i++) {
        section_free(SEC_POOL, &c->pools[i]);
        free(c->pools[i].name);
    }
    free(c->backends);
    free(c->sources);
    free(c->pools);
    free(c->path);
    free(c);
    return NULL;
}

const struct backend_settings *config_find_backend(const struct config *c, const char *name)
{
    for (size_t i = 0; i < c->n_backends; i++) {
        if (streq(c->backends[i].name, name))
            return &c->backends[i];
    }
    return NULL;
}

const struct config_pool *config_find_pool(const struct config *c, const char *name)
{
    for (size_t i = 0; i < c->n_pools; i++) {
        if (streq(c->pools[i].name, name))
            return &c->pools[i];
    }
    return NULL;
}

/* ---- printing ---- */

static void format_duration(int64_t s, char *buf, size_t size)
{
    if (s && s % 86400 == 0)
        snprintf(buf, size, "%" PRId64 "d", s / 86400);
    else if (s && s % 3600 == 0)
        snprintf(buf, size, "%" PRId64 "h", s / 3600);
    else if (s && s % 60 == 0)
        snprintf(buf, size, "%" PRId64 "m", s / 60);
    else
        snprintf(buf, size, "%" PRId64 "s", s);
}

static void format_size(uint64_t b, char *buf, size_t size)
{
    static const char units[] = "KMGT";
    int u = -1;
    while (b && b % 1024 == 0 && u < 3) {
        b /= 1024;
        u++;
    }
    if (u < 0)
        snprintf(buf, size, "%" PRIu64, b);
    else
        snprintf(buf, size, "%" PRIu64 "%c", b, units[u]);
}

static void print_section(FILE *out, enum section_kind sec, int type, const void *base)
{
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        const struct config_key *k = &keys[i];
        if (!key_applies(k, sec, type))
            continue;
        const char *field = (const char *)base + k->offset;
        char tmp[64];
        fprintf(out, "%s = ", k->name);
        switch (k->type) {
        case KEY_STRING:
        case KEY_PATH:
            fprintf(out, "%s", *(char *const *)field ? *(char *const *)field : "");
            break;
        case KEY_INT:
            fprintf(out, "%d", *(const int *)field);
            break;
        case KEY_BOOL:
            fprintf(out, "%s", *(const bool *)field ? "yes" : "no");
            break;
        case KEY_DURATION:
            format_duration(*(const int64_t *)field, tmp, sizeof(tmp));
            fprintf(out, "%s", tmp);
            break;
        case KEY_SIZE:
            format_size(*(const uint64_t *)field, tmp, sizeof(tmp));
            fprintf(out, "%s", tmp);
            break;
        case KEY_ENUM:
            fprintf(out, "%s", enum_to_string(k->values, *(const int *)field));
            break;
        case KEY_LIST:
        case KEY_GLOB_LIST:
        case KEY_IMAGE_MAP: {
            char *const *v = *(char **const *)field;
            for (size_t j = 0; v && v[j]; j++)
                fprintf(out, "%s%s", j ? ", " : "", v[j]);
            break;
        }
        }
        fputc('\n', out);
    }
}

int config_print(const struct config *c, FILE *out)
{
    fprintf(out, "# effective configuration (%s)\n", c->path ? c->path : "built-in defaults");
    fprintf(out, "[agent]\n");
    print_section(out, SEC_AGENT, 0, &c->agent);
    for (size_t i = 0; i < c->n_backends; i++) {
        fprintf(out, "\n[backend \"%s\"]\n", c->backends[i].name);
        print_section(out, SEC_BACKEND, c->backends[i].type, &c->backends[i]);
    }
    for (size_t i = 0; i < c->n_sources; i++) {
        fprintf(out, "\n[source \"%s\"]\n", c->sources[i].name);
        print_section(out, SEC_SOURCE, c->sources[i].type, &c->sources[i]);
    }
    for (size_t i = 0; i < c->n_pools; i++) {
        fprintf(out, "\n[pool \"%s\"]\n", c->pools[i].name);
        print_section(out, SEC_POOL, 0, &c->pools[i]);
    }
    return ferror(out) ? -EIO : 0;
}

int config_print_keys(FILE *out)
{
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        const struct config_key *k = &keys[i];
        const char *const *type_names = k->section == SEC_BACKEND  ? backend_type_names
                                        : k->section == SEC_SOURCE ? source_types
                                                                   : NULL;
        fprintf(out, "%s\t", section_names[k->section]);
        if (k->types == ALL_TYPES || !type_names) {
            fputs("all", out);
        } else {
            bool first = true;
            for (unsigned t = 0; type_names[t]; t++) {
                if (k->types & T(t)) {
                    fprintf(out, "%s%s", first ? "" : ",", type_names[t]);
                    first = false;
                }
            }
        }
        fprintf(out, "\t%s\t%s\t%s\n", k->name, k->def, k->help);
    }
    return ferror(out) ? -EIO : 0;
}
