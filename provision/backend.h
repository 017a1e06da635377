/* VM backends behind one ops table.
 *
 * The scheduler never knows which hypervisor it talks to: it asks a backend
 * for its capacity, launches a VM for one attempt of a job, receives the VM's
 * events (phase changes, live output, artifacts, the result), may cancel the
 * workload, and always destroys the VM in the end. list_owned and
 * destroy_owned let a restarted daemon find and remove VMs it owns.
 *
 * Everything runs on the loop thread; backends push blocking work to the
 * thread pool themselves. Optional slots may be NULL; callers check.
 */
#ifndef AL_BACKEND_H
#define AL_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "runner/base/error.h"
#include "provision/accel.h" /* enum accel_mode */

struct backend;
struct vm;
struct al_curl;

enum backend_type {
    BACKEND_LIBVIRT = 0,
    BACKEND_PROXMOX,
};

enum inject_mode {
    INJECT_SEED = 0,
    INJECT_GUESTFS,
};

/* How a job's VM starts (pool key "start"). */
enum vm_start {
    VM_START_BOOT = 0, /* a boot of its own */
    VM_START_SNAPSHOT, /* restored from a memory snapshot of a booted VM when one is valid
                        * (libvirt; made in the background), else a boot */
    VM_START_AUTO,     /* snapshot where the backend supports it, boot elsewhere */
};

/* How a libvirt backend reaches its VMs' channel, console and seed
 * (key "transport"). */
enum libvirt_transport {
    LV_TRANSPORT_AUTO = 0, /* remote when libvirt calls the connection remote */
    LV_TRANSPORT_LOCAL,    /* a unix socket, a console log file and a seed file
                            * on this host's filesystem, shared with QEMU */
    LV_TRANSPORT_REMOTE,   /* libvirt streams and a seed volume: nothing on the
                            * host's filesystem is assumed */
};

/* Copies uri into buf (size bytes) without what may be a credential: a
 * password in its user part ("qemu+ssh://u:pw@h/system" gives
 * "qemu+ssh://u@h/system") and its query ("?keyfile=...", "?pkipath=...").
 * Truncates to fit. */
void libvirt_uri_redact(const char *uri, char *buf, size_t size);

/* Names of enum backend_type and enum inject_mode, NULL-terminated. */
extern const char *const backend_type_names[];
extern const char *const libvirt_transport_names[];

/* True when a libvirt URI reaches its host over a network: a transport of
 * ssh, libssh, libssh2, tls, tcp or ext ("qemu+ssh://h/system"), or a host
 * name without one ("qemu://h/system" is TLS). "qemu:///system",
 * "qemu+unix:///system", "test:///default" are local. */
bool libvirt_uri_is_remote(const char *uri);
extern const char *const vm_start_names[];
extern const char *const inject_mode_names[];

const char *backend_type_to_string(int type);
const char *inject_mode_to_string(int mode);
int inject_mode_from_string(const char *s, int *ret);

/* Settings of a libvirt backend. Strings are never NULL ("" = unset). */
struct libvirt_settings {
    char *uri;
    int inject; /* enum inject_mode */
    int accel;  /* enum accel_mode */
    /* a guest with no sign of life (kernel output on the console, the
     * helper's hello) this long after it started is ended and retried once
     * on a fresh VM under TCG; 0 = off */
    int64_t boot_watchdog_s;
    int64_t boot_watchdog_tcg_s;
    char *emulator; /* the QEMU binary of the domains; "" = libvirt's default */
    char *network;
    char *storage_pool;
    int transport; /* enum libvirt_transport */
};

/* Settings of a Proxmox VE backend. Strings are never NULL ("" = unset). */
struct proxmox_settings {
    char *url;
    char *token_file;
    char *user;          /* ticket auth instead of a token */
    char *password_file; /* ticket auth */
    char *ca_file;
    char *fingerprint;
    char *node;
    char *pool;
    char *template_vm; /* the template of the agent's default image */
    char **templates;  /* "IMAGE:VMID" entries, or NULL: templates of other images */
    char *storage;
    char *bridge;
    bool full_clone;
    char *ciuser;       /* cloud-init user of the clones */
    char *sshkeys_file; /* cloud-init public keys of the clones */
};

/* What one backend is told to be: common capacity settings and the part of
 * its type. The configuration layer fills it; the backend only reads it. */
struct backend_settings {
    char *name;
    int type;        /* enum backend_type */
    int max_vms;     /* 0 = derived from host */
    int vcpus;       /* capacity; 0 = host CPUs */
    uint64_t memory; /* capacity in bytes; 0 = 80% of host memory */
    struct libvirt_settings libvirt;
    struct proxmox_settings proxmox;
};

/* A golden image resolved by the engine for a backend that boots VMs from
 * local disk images (BACKEND_NEEDS_IMAGE). */
struct vm_image {
    const char *name;
    const char *disk;    /* absolute path of the qcow2 golden disk */
    const char *kernel;  /* absolute path, for direct boot */
    const char *initrd;  /* absolute path */
    const char *cmdline; /* kernel command line, may be NULL */
    uint64_t virtual_size;
};

struct backend_capacity {
    int max_vms;
    int vcpus;
    uint64_t memory; /* bytes */
    int used_vms;
    int used_vcpus;
    uint64_t used_memory;
    bool healthy;
    /* not healthy until an operator fixes the configuration (credentials
     * refused, certificate mismatch); the engine fails jobs whose every
     * backend is broken instead of queueing them forever */
    bool broken;
    /* the size is not known yet (a host not connected since the start):
     * max_vms, vcpus and memory are the configured ones or placeholders,
     * and admission does not refuse a job for not fitting them */
    bool size_unknown;
    char reason[160]; /* why not healthy */
    /* the accelerator VMs start under ("kvm", "tcg"; "" = not applicable)
     * and, for tcg, why KVM is not used */
    char accel[8];
    char accel_reason[256];
};

struct env_pair {
    const char *name;
    const char *value;
};

/* Everything a backend needs to run one attempt of a job. The strings and
 * arrays belong to the caller and must stay valid until the VM is destroyed. */
struct vm_request {
    const char *job_id;
    int attempt;
    const char *image_name; /* the job's image, as named in its spec */
    /* the image resolved by the engine, for backends with
     * BACKEND_NEEDS_IMAGE; NULL for the others. launch() copies it. */
    const struct vm_image *image;
    int cpus;
    uint64_t memory;     /* bytes */
    uint64_t disk_bytes; /* virtual size of the job's disk; 0 = the image's */
    int inject;          /* enum inject_mode; -1 = the backend's default */

    /* the workload */
    const char *const *argv; /* NULL-terminated, or NULL when script is set */
    const char *script;
    const struct env_pair *env;
    size_t n_env;
    const struct env_pair *secret_env; /* delivered over the channel only */
    size_t n_secret_env;
    int64_t timeout_s;            /* in-guest timeout */
    const char *const *artifacts; /* NULL-terminated, may be NULL */
    uint64_t max_artifact_bytes;  /* 0 = unlimited */
    const char *workdir_tar;      /* host path of a tar to unpack as the work dir, or NULL */
    bool keep_running;            /* debugging: the guest does not power off */
    /* A warm VM: boots with no job and waits, reporting VM_PHASE_CONNECTED
     * when its helper is ready; assign() gives it a job later. job_id is
     * the VM's own id then; argv/script are ignored. */
    bool warm;
    int start; /* enum vm_start; ignored for warm VMs */
};

enum vm_phase {
    VM_PHASE_PROVISIONED, /* disk and cloud-init data ready */
    VM_PHASE_BOOTING,     /* the hypervisor started the VM */
    VM_PHASE_CONNECTED,   /* the in-guest helper said hello */
    VM_PHASE_RUNNING,     /* the workload started */
};

enum vm_stream {
    VM_STDOUT = 1,
    VM_STDERR = 2,
};

enum vm_outcome {
    VM_EXITED = 0,    /* the workload ended and the guest reported it */
    VM_GUEST_TIMEOUT, /* the in-guest timeout fired */
    VM_CANCELED,      /* cancelled on request, the guest confirmed */
    VM_INFRA_ERROR,   /* provisioning failed, the VM died, the channel broke, ... */
};

struct vm_result {
    enum vm_outcome outcome;
    int exit_code; /* 0..255 for VM_EXITED; 124/130 for timeout/cancel */
    int signal;    /* signal that killed the workload, or 0 */
    char reason[512];
    uint64_t artifact_bytes;
    uint64_t artifact_files;
    char artifact_error[256];
    /* limits the guest ran into (bits of enum al_limit, runner/base/hardlimits.h)
     * and how long the channel's rate limit held it back */
    unsigned limits;
    uint64_t throttled_ms;
    /* milliseconds since launch at which each phase was reached (0 = not) */
    uint64_t t_provisioned, t_booting, t_connected, t_running, t_exited;
    /* microseconds of provisioning spent waiting on the virtualisation API
     * (libvirt: storage pool and overlay volume calls, which run qemu-img in
     * libvirtd); the rest of t_provisioned is agentlab's own work */
    uint64_t us_provision_api;
    /* the accelerator the VM ran under ("kvm", "tcg"; "" when the backend
     * has no such notion), and whether it ended because the guest showed no
     * sign of life after it started (VM_INFRA_ERROR): the owner retries such
     * a VM once on a fresh one, which the backend starts under TCG */
    char accel[8];
    bool silent_boot;
};

/* A golden image a host holds (a complete image volume of its pool). */
struct backend_host_image {
    char *image;  /* the image's name */
    char *role;   /* "disk", "kernel", "initrd" */
    char *volume; /* the volume's name on the host */
    char sha256[65];
    uint64_t size;
};

/* What a backend knows of the host it drives, for `agentlab host ls`:
 * state the backend keeps, never a fresh round trip. Filled by host_info;
 * the caller frees the images with backend_host_info_clear(). */
struct backend_host_info {
    char uri[256];     /* where it connects, with no credentials; "" = n/a */
    char transport[8]; /* "local", "remote"; "" = n/a */
    bool reachable;    /* the connection is up */
    char error[200];   /* why it is not (the last connection error), or "" */
    /* true: images lists what the host holds (a remote host's pool, as last
     * read; images_age_ms ago, images_error when that read failed). false:
     * the backend reads the daemon's own image files (a local host) or has
     * no notion of images */
    bool images_listed;
    struct backend_host_image *images;
    size_t n_images;
    int64_t images_age_ms; /* -1 = not read yet */
    char images_error[200];
};

void backend_host_info_clear(struct backend_host_info *h);

/* Events of one VM, delivered on the loop thread. finished runs exactly once
 * per launched VM (also when launch fails asynchronously); after it the VM
 * sends nothing more and the owner must call destroy. */
struct vm_events {
    void (*phase)(struct vm *vm, enum vm_phase phase, void *data);
    void (*output)(struct vm *vm, enum vm_stream stream, const uint8_t *buf, size_t len,
                   void *data);
    /* one tar stream in chunks, in order */
    void (*artifact)(struct vm *vm, const uint8_t *buf, size_t len, void *data);
    void (*diag)(struct vm *vm, const char *message, void *data);
    void (*finished)(struct vm *vm, const struct vm_result *result, void *data);
};

/* A VM some backend owns, as found by list_owned (crash reconcile, gc). */
struct owned_vm {
    char *name;   /* backend-specific identity (domain name, VMID) */
    char *job_id; /* from the VM's metadata */
    int attempt;
    char *owner; /* the owner id that created it */
    bool running;
};

void owned_vm_array_free(struct owned_vm *v, size_t n);

/* For backends: records in r that vm reached phase p t_ms after launch, then
 * tells the VM's owner (ev->phase). */
void vm_phase_reached(struct vm *vm, struct vm_result *r, enum vm_phase p, uint64_t t_ms);

typedef void (*backend_done_cb)(int result, const struct al_error *err, void *data);
typedef void (*backend_list_cb)(int result, struct owned_vm *vms, size_t n,
                                const struct al_error *err, void *data);

/* Capabilities a backend announces in backend_ops.caps. */
enum backend_cap {
    /* VMs boot from a golden image in the local catalogue: the engine must
     * resolve vm_request.image (and refuses jobs whose image is missing) */
    BACKEND_NEEDS_IMAGE = 1u << 0,
};

struct backend_ops {
    const char *type;
    unsigned caps; /* bits of enum backend_cap */
    /* Connects and prepares (storage pool, capacity). Loop thread. */
    int (*open)(struct backend *b, struct al_error **err);
    /* Releases everything; every VM must be destroyed before. done may run
     * before close returns. */
    void (*close)(struct backend *b, void (*done)(void *data), void *data);
    /* The name launch() will give the VM of this job attempt, so the owner
     * can record it durably before anything is created. */
    int (*vm_name)(struct backend *b, const char *job_id, int attempt, char *buf, size_t size);
    /* Current capacity and use. */
    void (*capacity)(struct backend *b, struct backend_capacity *ret);
    /* Provisions and boots a VM. On 0 the VM exists (in *ret_vm) and events
     * follow; finished reports any later failure. On error nothing exists. */
    int (*launch)(struct backend *b, const struct vm_request *req, const struct vm_events *ev,
                  void *ev_data, struct vm **ret_vm, struct al_error **err);
    /* Gives a warm VM that reached VM_PHASE_CONNECTED its job: from now on
     * the VM's events go to ev/ev_data, starting with the phases up to
     * CONNECTED again (timings measured from this call), and it is destroyed
     * after this job like any other. -EBUSY when the VM is not ready. The
     * request follows launch()'s ownership rules. Optional. */
    int (*assign)(struct vm *vm, const struct vm_request *req, const struct vm_events *ev,
                  void *ev_data, struct al_error **err);
    /* Asks the guest to stop the workload; finished follows with
     * VM_CANCELED (or an error). Optional. */
    int (*cancel)(struct vm *vm);
    /* Destroys the VM and everything it owns (disks, seeds, sockets, run dir),
     * at any phase, also while launch is still working. done runs on the loop
     * when all is gone; the vm is freed after done returns. Never fails to
     * free the vm; result reports leftovers that could not be removed. */
    void (*destroy)(struct vm *vm, backend_done_cb done, void *data);
    /* Lists VMs (and their leftovers) owned by this agentlab installation. */
    int (*list_owned)(struct backend *b, backend_list_cb cb, void *data);
    /* Destroys an owned VM found by list_owned, by name, with its disks. */
    int (*destroy_owned)(struct backend *b, const char *name, backend_done_cb done, void *data);
    /* Readies in the background what makes VMs of req's image and size
     * start fast (a memory snapshot when req->start asks for one), as a
     * job's launch would; cheap when all is ready. Only req's image, sizes
     * and start are read. Optional. */
    void (*prepare)(struct backend *b, const struct vm_request *req);
    /* Fills *ret (zeroed by the caller) with what the backend knows of its
     * host, from state it keeps: never blocks the loop; may start reading
     * that state afresh in the background, which a later call sees.
     * Optional. */
    void (*host_info)(struct backend *b, struct backend_host_info *ret);
};

/* Shared context every backend gets. */
struct backend_env {
    uv_loop_t *loop;
    struct al_curl *curl;
    const char *owner_id;        /* identifies this agentlab instance in VM metadata */
    const char *state_dir;       /* storage pools live below it */
    const char *run_dir;         /* per-VM sockets and files, the accelerator probe cache */
    int64_t heartbeat_timeout_s; /* a guest silent this long is dead */
    uint64_t max_log_bytes;      /* console output kept per VM */
    /* hard limits on what a guest may send over its channel */
    uint64_t channel_max_frame_bytes;
    uint64_t channel_max_bytes_per_s; /* 0 = unlimited */
    int channel_max_frames_per_s;     /* 0 = unlimited */
};

struct backend {
    const struct backend_ops *ops;
    const struct backend_settings *cfg;
    struct backend_env env;
    char *name;
    void *priv;
};

/* The part of every VM the caller may see; backends embed it first in
 * their own VM struct. */
struct vm {
    struct backend *backend;
    char *name;
    const struct vm_events *ev;
    void *ev_data;
    /* limits the guest ran into so far (bits of enum al_limit), kept up to
     * date by the backend: the attempt reads them also when it ends the VM
     * itself (a timeout) and no vm_result comes */
    unsigned limits;
};

/* Creates and opens the backend named in cfg; cfg and the strings of env
 * must outlive it. Returns 0 or negative errno. */
int backend_new(const struct backend_env *env, const struct backend_settings *cfg,
                struct backend **ret, struct al_error **err);

/* The ops table registered for a backend type, or NULL. */
const struct backend_ops *backend_ops_of(int type);

/* A copy of img in one allocation, or NULL on ENOMEM; free() frees it. */
struct vm_image *vm_image_dup(const struct vm_image *img);

/* Closes and frees the backend; done (may be NULL) runs when it is gone. */
void backend_free(struct backend *b, void (*done)(void *data), void *data);

/* Replaces the ops table used for a backend type (enum backend_type), e.g.
 * to run the engine against a simulated hypervisor in tests. */
int backend_register(int type, const struct backend_ops *ops);

/* The ops table of each backend type. */
extern const struct backend_ops libvirt_backend_ops;
extern const struct backend_ops proxmox_backend_ops;

#endif
