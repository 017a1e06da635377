/* agentlab configuration: an INI file with [agent], [backend "NAME"],
 * [source "NAME"] and [pool "NAME"] sections.
 *
 * Every key has a built-in default, so no file is needed: then there is one
 * libvirt backend "local" and one pool "default" using it. Keys, types,
 * defaults and help live in one table (config.c) that drives parsing,
 * validation and `agentlab config show`.
 *
 * AGENTLAB_CONFIG names the file (default /etc/agentlab/agentlab.conf; a
 * missing default file is fine, a missing named one is an error).
 * AGENTLAB_STATE_DIR and AGENTLAB_RUN_DIR override the directories.
 */
#ifndef AL_CONFIG_H
#define AL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "runner/base/error.h"
#include "runner/base/log.h"
#include "runner/base/util.h"
#include "provision/backend.h" /* struct backend_settings */

#define AL_CONFIG_DEFAULT_PATH "/etc/agentlab/agentlab.conf"
#define AL_CONFIG_MAX_BYTES    (1u << 20)
#define AL_CONFIG_MAX_SECTIONS 64
/* A line of the file, and a value on it. libinih reads lines of 198
 * characters; config.c passes it longer ones in a shorter form (see
 * reader()). A value is at most a quarter of a line so that whatever
 * `config show` prints (", " between list items, derived paths) reads
 * back. */
#define AL_CONFIG_MAX_LINE  (64 * 1024)
#define AL_CONFIG_MAX_VALUE (16 * 1024)

enum source_type {
    SOURCE_SPOOL = 0,
    SOURCE_HTTP,
    SOURCE_GITLAB,
    SOURCE_GITHUB,
};

struct config_agent {
    char *state_dir;
    char *run_dir;
    int log_level; /* enum al_log_level */
    char *image;   /* default image for jobs that name none */
    char *pool;    /* default pool */
    char *api_socket;
    char *api_socket_group;
    char *api_listen; /* "" = TCP listener off, else "HOST:PORT" */
    char *api_token_file;
    int api_max_connections;
    uint64_t api_max_header_bytes;
    uint64_t api_max_upload;
    int64_t api_header_timeout_s;
    int64_t api_idle_timeout_s;
    int64_t boot_timeout_s;
    int64_t job_timeout_s;
    int64_t heartbeat_timeout_s;
    int max_attempts;
    int64_t retention_s;
    uint64_t retention_bytes;
    uint64_t max_log_bytes;
    uint64_t max_artifact_bytes;
    int max_artifact_files;
    int job_cpus;        /* default vCPUs of a job */
    uint64_t job_memory; /* default memory of a job, bytes */
    /* hard limits on what a guest, a job spec or a client may send */
    uint64_t channel_max_frame_bytes; /* payload of one guest frame */
    uint64_t channel_max_bytes_per_s; /* guest -> host, average; 0 = unlimited */
    int channel_max_frames_per_s;     /* guest -> host, average; 0 = unlimited */
    uint64_t max_disk_bytes;          /* virtual size of a job's disk (its overlay) */
    int api_max_jobs;                 /* live jobs submitted through the API and CLI */
};

/* A [backend "NAME"] section is a struct backend_settings (provision/backend.h). */

struct config_source {
    char *name;
    int type;         /* enum source_type */
    char *pool;       /* "" or the first of pools */
    char **pools;     /* pools the source's jobs are routed among; NULL = every pool */
    char *dir;        /* spool */
    char *url;        /* http, gitlab, github api base */
    char *token_file; /* http, gitlab, github */
    char **labels;    /* gitlab tags, github labels */
    int concurrent;
    int64_t poll_interval_s;
    int clone;                   /* gitlab: enum gitlab_clone (sources/gitlab_job.h) */
    uint64_t output_limit;       /* gitlab: bytes of job log sent to the server */
    uint64_t max_checkout_bytes; /* gitlab: size cap of a host-side checkout */
    char *cache_dir;             /* gitlab: the cache store ("" = under state_dir) */
    uint64_t cache_max_bytes;    /* gitlab: size cap of the cache store; 0 = no cache */
    /* github (sources/github.h) */
    char *repo;                    /* "owner/name", or "" when org is set */
    char *org;                     /* organisation, or "" when repo is set */
    char **repos;                  /* org: repositories the polling fallback looks at */
    char *app_id;                  /* GitHub App id (or client id); "" = token_file auth */
    char *app_key_file;            /* the App's private key (PEM) */
    char *installation_id;         /* "" = looked up through the API */
    int runner_group_id;           /* runner group of the JIT runners */
    int max_runners;               /* live runners (VMs) of this source at most */
    char *webhook_listen;          /* "HOST:PORT" of the webhook listener, "" = off */
    char *webhook_secret_file;     /* the webhook's HMAC secret */
    uint64_t webhook_max_body;     /* bytes of one delivery */
    int poll;                      /* enum github_poll (sources/github.h) */
    char *runner_dir;              /* where the image has the actions runner */
    int64_t runner_idle_timeout_s; /* a runner that took no job by then is removed */
    int github_mode;               /* enum github_mode (sources/github.h) */
    char *enterprise;              /* scaleset: enterprise slug, or "" */
    char *github_url;              /* scaleset: web URL of GitHub ("" = from url) */
    char *scale_set_name;          /* scaleset: what workflows put in runs-on */
    char *runner_group;            /* scaleset: runner group name */
    int min_runners;               /* scaleset: idle registered runners kept warm */
};

struct config_pool {
    char *name;
    char **backends; /* NULL = every backend, in file order */
    char **labels;   /* a job must carry all of them to be routed here; NULL = any job */
    /* The flavour: what a job of the pool gets unless it asks otherwise,
     * resolved at load (image never "", cpus and memory never 0). */
    char *image;
    int cpus;
    uint64_t memory; /* bytes, a whole number of MiB */
    uint64_t disk;   /* bytes, a whole number of GiB; 0 = the image's virtual size */
    /* What a job of the pool may ask for, resolved: 0 = no bound but what a
     * backend of the pool can hold. */
    int max_cpus;
    uint64_t max_memory;
    char **allowed_images; /* fnmatch(3) patterns, never NULL after load */
    /* The keys as written (0 = unset), which config show prints back. */
    struct {
        int cpus;
        uint64_t memory;
        int max_cpus;
        uint64_t max_memory;
    } conf;
    int warm;
    int64_t warm_max_idle_s;
    int warm_peak;       /* warm VMs during peak hours; 0 = no peak */
    int warm_peak_start; /* peak hours: [start, end) local time, Monday to Friday */
    int warm_peak_end;
    int start; /* enum vm_start: how job VMs start (boot, snapshot, auto) */
};

struct config {
    char *path; /* file read, or NULL for built-in defaults */
    struct config_agent agent;
    struct backend_settings *backends;
    size_t n_backends;
    struct config_source *sources;
    size_t n_sources;
    struct config_pool *pools;
    size_t n_pools;
};

/* Loads configuration. path NULL means $AGENTLAB_CONFIG or the default path
 * (where a missing file is not an error). Errors name file, line, key and the
 * expected form. On success the caller owns *ret and frees it with
 * config_free(). */
int config_load(const char *path, struct config **ret, struct al_error **err);

/* Parses configuration from a string (tests, fuzzing). name is used in
 * messages. Applies environment overrides like config_load(). */
int config_load_string(const char *text, size_t len, const char *name, struct config **ret,
                       struct al_error **err);

struct config *config_free(struct config *c);
DEFINE_CLEANUP_FUNC(struct config, config_free)
#define _cleanup_config_ _cleanup_(config_freep)

/* Writes the effective configuration as INI, every key included. */
int config_print(const struct config *c, FILE *out);

/* Writes every key the parser knows, one a line, tab-separated: section
 * (agent, backend, source, pool), the backend or source types it applies to
 * ("all" or a comma-separated list), name, built-in default ("@state/" and
 * "@run/" are relative to state_dir and run_dir), and a short description.
 * The man page test compares agentlab.conf(5) against this list. */
int config_print_keys(FILE *out);

const struct backend_settings *config_find_backend(const struct config *c, const char *name);
const struct config_pool *config_find_pool(const struct config *c, const char *name);

const char *source_type_to_string(int type);

/* True when image matches one of the pool's allowed_images patterns. */
bool config_pool_allows_image(const struct config_pool *p, const char *image);

/* Parses one entry of a proxmox backend's templates ("IMAGE:VMID"). Either
 * out-parameter may be NULL. False when the entry is malformed. */
bool image_map_entry_parse(const char *entry, char *ret_image, size_t image_size,
                           int64_t *ret_vmid);

/* The template a proxmox backend clones for image: the VMID of its entry in
 * templates, else template_vm when image is the agent's default image, else
 * NULL. The result points into b, or into buf (size bytes) for a VMID. */
const char *config_backend_template(const struct config *c, const struct backend_settings *b,
                                    const char *image, char *buf, size_t size);

/* True when s is a valid object name (al_name_is_valid). */
static inline bool config_name_is_valid(const char *s)
{
    return al_name_is_valid(s);
}

#endif
