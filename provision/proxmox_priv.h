/* What the files of the Proxmox backend share (proxmox_backend.c: ops,
 * helpers, health, open and close; proxmox_clone.c: template, node, clone,
 * config and start; proxmox_run.c: the workload through the guest agent;
 * proxmox_teardown.c: stop and purge, owned VMs). Private to those files. */
#ifndef AL_PROXMOX_PRIV_H
#define AL_PROXMOX_PRIV_H

#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "provision/backend.h"
#include "provision/pve_api.h"
#include "provision/pve_guest.h"
#include "provision/pve_task.h"
#include "runner/base/base64.h"
#include "runner/base/list.h"
#include "runner/base/log.h"
#include "runner/base/util.h"

#define VM_PREFIX          "agentlab-"
#define DEFAULT_MAX_VMS    8
#define PROBE_INTERVAL_MS  15000u
#define TEMPLATE_TTL_MS    60000u
#define MAX_VMID_TRIES     10
#define AGENT_POLL_MS      300u
#define AGENT_POLL_MAX_MS  1000u
#define POLL_FAST_MS       300u
#define POLL_MAX_MS        1000u
#define POLL_SLOW_MS       2000u
#define POLL_SLOW_AFTER_MS 60000u
#define LOG_CHUNK          (1u << 20)
#define ART_CHUNK          (3u << 20)
#define TEARDOWN_TRIES     5
#define AGENT_HICCUPS      20 /* agent answers "not running" while the job runs */

struct px_vm;
struct px_backend;

/* Stop and purge of one VM; shared by destroy and destroy_owned. */
struct px_teardown {
    struct px_backend *pb;
    char node[64];
    int64_t vmid;
    char check_name[64]; /* only delete when the VM has this name ("" = no check) */
    bool stop;
    int step;
    int tries;
    struct pve_call *call;
    struct pve_task *task;
    void (*done)(struct px_teardown *t, int result, const char *message);
    void *data;
    /* an end that must not happen inside the caller's call (destroy) */
    struct al_list defer_link; /* on pb->deferred */
    int defer_result;
    char defer_msg[400];
};

struct px_backend {
    struct backend *b;
    struct pve_api *api;
    char **nodes_cfg; /* candidate nodes; NULL = every node */
    int max_vms;
    int64_t cap_vcpus;
    uint64_t cap_memory;
    /* template: the last one looked up (tmpl_want: its VMID or name) */
    char tmpl_want[64];
    int64_t tmpl_vmid;
    char tmpl_node[64];
    char tmpl_name[64];
    bool tmpl_is_template;
    uint64_t tmpl_at;
    bool tmpl_busy;
    char tmpl_error[300];
    struct al_list tmpl_waiters; /* of px_vm.wait_link, newest first */
    /* health */
    bool healthy;
    bool broken;
    char health[200];
    struct pve_call *probe;
    struct al_list vms; /* of px_vm.link, newest first */
    uv_timer_t defer;
    struct al_list deferred; /* of px_teardown.defer_link, newest first */
    int closes_pending;
    bool closing;
    void (*close_done)(void *data);
    void *close_data;
};

enum write_file {
    W_JOB = 0,
    W_SECRETS,
    W_WORKDIR,
    W_DONE,
};

enum tick_step {
    T_STATUS = 0,
    T_OUT,
    T_ERR,
};

struct px_vm {
    struct vm base;
    struct px_backend *pb;
    struct al_list link;      /* on pb->vms */
    struct al_list wait_link; /* on pb->tmpl_waiters while waiting for the template */
    struct vm_request req;
    /* the template of the VM's image (settings' templates, else template),
     * as configured, and once looked up where it is */
    char tmpl_want[64];
    int64_t tmpl_vmid;
    char tmpl_node[64];
    uint64_t t0;
    struct vm_result result;
    bool finished;
    bool destroying;
    backend_done_cb destroy_done;
    void *destroy_data;
    struct pve_call *call;
    bool call_cancellable;
    struct pve_task *task;
    /* the VM */
    char node[64];
    int64_t vmid;
    bool cloned;       /* the clone task ended OK: the VM exists */
    bool clone_unsure; /* the clone request may have worked */
    bool start_sent;
    int vmid_tries;
    /* delivery */
    struct al_buf job, secrets;
    int wd_fd;
    uint64_t wd_size;
    enum write_file wfile;
    uint32_t wchunk;
    bool agent_up;
    uint64_t agent_wait;
    char **cmd;
    /* the run */
    int64_t pid;
    bool exited;
    enum tick_step tick;
    bool tick_output;
    uint64_t poll_ms, t_running;
    uint64_t out_off, err_off, art_off;
    bool stream_done[3]; /* after the exit: nothing more to read */
    uint64_t log_cap, art_cap;
    int hiccups;
    struct pve_guest_status st;
    struct px_teardown td;
};

/* proxmox_backend.c */
bool px_node_name_ok(const char *s);
/* Counts a failed API call against the backend's health. */
void px_note_failure(struct px_backend *pb, int result, const struct al_error *err);
void px_phase(struct px_vm *v, enum vm_phase p);
/* Reports the VM's result once, then tears it down. */
void px_finish(struct px_vm *v, enum vm_outcome outcome, int exit_code, const char *fmt, ...)
        _printf_(4, 5);
void px_fail_call(struct px_vm *v, int result, const struct al_error *err, const char *what);
/* True when the VM is being destroyed or has finished: a reply is dropped. */
bool px_settle(struct px_vm *v);
/* An API call on the VM's path (/nodes/{node}/qemu/{vmid}{suffix}). */
int px_vm_call(struct px_vm *v, const char *method, const char *suffix,
               const struct pve_params *params, unsigned flags, uint64_t delay, size_t max_reply,
               bool cancellable, pve_cb cb);
/* GET /cluster/resources?type=vm: every VM and template with node, status
 * and tags (template lookup, list_owned, destroy_owned). */
int px_list_resources(struct px_backend *pb, pve_cb cb, void *data, struct al_error **err);

/* proxmox_clone.c */
void px_on_start_timer(int result, const struct pve_reply *reply, const struct al_error *err,
                       void *data);
bool px_node_wanted(const struct px_backend *pb, const char *name);
void px_step_nodes(struct px_vm *v);
/* The template (VMID or name) of image: its entry in cfg's templates
 * ("IMAGE:VMID"), else template. */
void px_template_of(const struct backend_settings *cfg, const char *image, char *buf, size_t size);
void px_step_nextid(struct px_vm *v);

/* proxmox_run.c */
void px_step_write(struct px_vm *v);
/* Issues the next status/output/artifact read while the job runs. */
void px_pump(struct px_vm *v);

/* proxmox_teardown.c */
void px_on_defer(uv_timer_t *h);
void px_waiters_remove(struct px_vm *v);
void px_vm_free(struct px_vm *v);
void px_teardown_start(struct px_vm *v);
int px_list_owned(struct backend *b, backend_list_cb cb, void *data);
int px_destroy_owned(struct backend *b, const char *name, backend_done_cb done, void *data);

#endif
