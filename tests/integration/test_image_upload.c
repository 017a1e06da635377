/* Golden images distributed to a "remote" libvirt host by checksum
 * (provision/libvirt_upload.c), against a second libvirtd in its own mount
 * namespace that cannot see this test's files (tests/scripts/
 * remote-libvirtd.sh), reached as qemu+tcp://127.0.0.1:PORT/system:
 * the first ensure uploads and the second does not; a rebuilt image is
 * uploaded again and the old one swept; uploads cut mid-way (cancelled, a
 * file that shrinks, a wrong checksum, leftovers of a killed daemon) leave
 * nothing that looks complete; the volumes exist only on the remote host.
 * Uses the micro image of the ctest fixture; a few seconds. */
#include "test_util.h"

#include <fcntl.h>
#include <inttypes.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "provision/libvirt_upload.h"
#include "runner/base/sha256.h"
#include "runner/base/util.h"
#include "runner/loop/virt_uv.h"
#include "runner/loop/work.h"

#define POOL        "agentlab-upload-test"
#define POOL_DIR    "/var/lib/libvirt/images/agentlab-upload-test"
#define POOL_RB     "agentlab-upload-rebuild"
#define POOL_RB_DIR "/var/lib/libvirt/images/agentlab-upload-rebuild"
#define POOL_SW     "agentlab-upload-sweep"
#define POOL_SW_DIR "/var/lib/libvirt/images/agentlab-upload-sweep"

static char *tmp;        /* the test's dir: hidden from the remote host */
static char *remote_dir; /* the harness's state */
static char *script;
static char uri[128];
static virConnectPtr conn;

static char *micro_file(const char *name)
{
    char *d = al_path_join(tmp, "state/images/micro");
    char *p = al_path_join(d, name);
    free(d);
    return p;
}

/* The remote-libvirtd harness with args (test_run_first_line()). */
static int harness(const char *args, char *out, size_t out_size)
{
    return test_run_first_line(script, args, out, out_size);
}

/* Runs a shell command inside the remote host's namespace; returns its exit
 * status and its first output line in out (may be NULL). */
static int remote_sh(const char *sh, char *out, size_t out_size)
{
    _cleanup_free_ char *args = NULL;
    assert_true(asprintf(&args, "exec '%s' sh -c \"%s\"", remote_dir, sh) > 0);
    return harness(args, out, out_size);
}

static void quiet_libvirt(void *data, virErrorPtr e)
{
    (void)data;
    (void)e;
}

static int setup(void **state)
{
    (void)state;
    virSetErrorFunc(NULL, quiet_libvirt);
    tmp = test_micro_tmpdir("upload");
    const char *src = getenv("AL_SOURCE_DIR");
    if (!src) {
        fprintf(stderr, "AL_SOURCE_DIR is not set: run through ctest\n");
        return -1;
    }
    script = al_path_join(src, "tests/scripts/remote-libvirtd.sh");
    remote_dir = al_path_join(test_outdir(), "remote-libvirtd");
    _cleanup_free_ char *args = NULL;
    if (asprintf(&args, "start '%s' --fresh --hide '%s' --owner %d", remote_dir, tmp,
                 (int)getpid()) < 0)
        return -1;
    /* a harness that cannot start (no unshare, no root, no free port) is a
     * failure with its reason on stderr, never a skip */
    if (harness(args, uri, sizeof(uri)) != 0 || strncmp(uri, "qemu+tcp://127.0.0.1:", 21) != 0) {
        fprintf(stderr, "the namespaced libvirtd did not start (%s); see %s/libvirtd.log\n", uri,
                remote_dir);
        return -1;
    }
    conn = virConnectOpen(uri);
    if (!conn) {
        fprintf(stderr, "connecting to %s: %s\n", uri, virGetLastErrorMessage());
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    if (conn)
        virConnectClose(conn);
    if (remote_dir) {
        _cleanup_free_ char *args = NULL;
        assert_true(asprintf(&args, "stop '%s'", remote_dir) > 0);
        if (harness(args, NULL, 0) != 0)
            fprintf(stderr, "stopping the namespaced libvirtd failed\n");
        /* the host's uploaded volumes; the logs stay */
        _cleanup_free_ char *cmd = NULL;
        assert_true(asprintf(&cmd, "rm -rf '%s/lib'", remote_dir) > 0);
        if (system(cmd) != 0)
            fprintf(stderr, "removing %s/lib failed\n", remote_dir);
    }
    test_tmpdir_remove(tmp);
    free(remote_dir);
    free(script);
    return 0;
}

static void sha_of(const char *path, char hex[AL_SHA256_HEX_SIZE])
{
    struct al_error *err = NULL;
    if (al_sha256_file(path, hex, NULL, &err) < 0)
        fail_msg("%s", al_error_message(err));
}

static int ensure(const char *pool, const char *pool_dir, const char *image,
                  enum image_vol_role role, const char *path, const char *sha,
                  int (*progress)(void *, uint64_t, uint64_t), void *opaque, struct image_vol *ret,
                  struct al_error **err)
{
    struct image_vol_request req = {
            .pool = pool,
            .pool_dir = pool_dir,
            .image = image,
            .role = role,
            .path = path,
            .sha256 = sha,
            .progress = progress,
            .opaque = opaque,
    };
    return image_vol_ensure(conn, &req, ret, err);
}

static void ensure_ok(const char *pool, const char *pool_dir, const char *image,
                      enum image_vol_role role, const char *path, const char *sha,
                      struct image_vol *ret)
{
    struct al_error *err = NULL;
    if (ensure(pool, pool_dir, image, role, path, sha, NULL, NULL, ret, &err) < 0)
        fail_msg("ensure %s: %s", path, al_error_message(err));
}

static bool has_vol(const char *pool_name, const char *name)
{
    virStoragePoolPtr pool = virStoragePoolLookupByName(conn, pool_name);
    assert_non_null(pool);
    virStorageVolPtr v = virStorageVolLookupByName(pool, name);
    virStoragePoolFree(pool);
    if (v)
        virStorageVolFree(v);
    return v != NULL;
}

static char *marker_of(const char *name)
{
    char *m = NULL;
    assert_true(asprintf(&m, "%s" IMAGE_VOL_MARKER_SUFFIX, name) > 0);
    return m;
}

/* The sha256 of a file on the remote host, as its sha256sum sees it. */
static void remote_sha(const char *path, char out[AL_SHA256_HEX_SIZE])
{
    _cleanup_free_ char *sh = NULL;
    char line[256];
    assert_true(asprintf(&sh, "sha256sum '%s'", path) > 0);
    assert_int_equal(remote_sh(sh, line, sizeof(line)), 0);
    snprintf(out, AL_SHA256_HEX_SIZE, "%.64s", line);
}

/* A copy of src in the test dir with one byte changed (at offset, from the
 * end when negative): a "rebuilt" image with a new checksum. */
static char *modified_copy(const char *src, const char *name, long offset)
{
    char *dst = al_path_join(tmp, name);
    _cleanup_free_ char *cmd = NULL;
    assert_true(asprintf(&cmd, "cp '%s' '%s'", src, dst) > 0);
    assert_int_equal(system(cmd), 0);
    int fd = open(dst, O_RDWR | O_CLOEXEC);
    assert_true(fd >= 0);
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    off_t at = offset < 0 ? st.st_size + offset : offset;
    unsigned char c;
    assert_int_equal(pread(fd, &c, 1, at), 1);
    c ^= 0xff;
    assert_int_equal(pwrite(fd, &c, 1, at), 1);
    close(fd);
    return dst;
}

/* The remote host sees none of the test's files, and the root namespace
 * none of the host's. */
static void test_host_is_separate(void **state)
{
    (void)state;
    _cleanup_free_ char *disk = micro_file("disk.qcow2");
    assert_int_equal(access(disk, R_OK), 0);
    _cleanup_free_ char *sh = NULL;
    assert_true(asprintf(&sh, "test -e '%s'", disk) > 0);
    assert_int_equal(remote_sh(sh, NULL, 0), 1);
    /* start and status of a running host answer with its URI */
    char again[128];
    _cleanup_free_ char *args = NULL;
    assert_true(asprintf(&args, "start '%s'", remote_dir) > 0);
    assert_int_equal(harness(args, again, sizeof(again)), 0);
    assert_string_equal(again, uri);
    free(args);
    assert_true(asprintf(&args, "status '%s'", remote_dir) > 0);
    assert_int_equal(harness(args, again, sizeof(again)), 0);
    assert_string_equal(again, uri);
    /* ... while the harness itself runs there */
    assert_int_equal(remote_sh("test -S /run/libvirt/libvirt-sock", NULL, 0), 0);
    /* the test's pool, made there by the host, lives there only */
    struct al_error *err = NULL;
    if (libvirt_pool_ensure(conn, POOL, POOL_DIR, false, &err) < 0)
        fail_msg("%s", al_error_message(err));
    assert_int_equal(remote_sh("test -d " POOL_DIR, NULL, 0), 0);
    assert_int_equal(access(POOL_DIR, F_OK), -1);
    virConnectPtr local = virConnectOpen("qemu:///system");
    assert_non_null(local);
    _cleanup_free_ char *remote_uri = virConnectGetURI(conn);
    assert_string_equal(remote_uri, uri);
    virStoragePoolPtr p = virStoragePoolLookupByName(local, POOL);
    assert_null(p);
    virConnectClose(local);
}

static void test_upload_once(void **state)
{
    (void)state;
    static const struct {
        const char *file;
        enum image_vol_role role;
    } parts[] = {
            {"disk.qcow2", IMAGE_VOL_DISK},
            {"vmlinuz", IMAGE_VOL_KERNEL},
            {"initrd.img", IMAGE_VOL_INITRD},
    };
    for (size_t i = 0; i < ARRAY_SIZE(parts); i++) {
        _cleanup_free_ char *path = micro_file(parts[i].file);
        char sha[AL_SHA256_HEX_SIZE];
        sha_of(path, sha);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);

        struct image_vol first = {0}, second = {0};
        ensure_ok(POOL, POOL_DIR, "micro", parts[i].role, path, sha, &first);
        assert_true(first.uploaded);
        assert_int_equal(first.sent, (uint64_t)st.st_size);
        assert_int_equal(first.size, (uint64_t)st.st_size);
        _cleanup_free_ char *want = NULL;
        assert_int_equal(image_vol_name("micro", parts[i].role, sha, &want, NULL), 0);
        assert_string_equal(first.name, want);
        assert_true(strncmp(first.path, POOL_DIR "/", strlen(POOL_DIR) + 1) == 0);
        printf("# %s: %" PRIu64 " bytes uploaded in %" PRIu64 " ms\n", first.name, first.sent,
               first.upload_ms);

        uint64_t t0 = al_now_mono_us();
        ensure_ok(POOL, POOL_DIR, "micro", parts[i].role, path, sha, &second);
        printf("# %s: present, checked in %" PRIu64 " us\n", second.name, al_now_mono_us() - t0);
        assert_false(second.uploaded);
        assert_int_equal(second.sent, 0);
        assert_string_equal(second.path, first.path);

        /* the host holds the same bytes, at a path this namespace lacks */
        char there[AL_SHA256_HEX_SIZE];
        remote_sha(first.path, there);
        assert_string_equal(there, sha);
        assert_int_equal(access(first.path, F_OK), -1);
        image_vol_clear(&first);
        image_vol_clear(&second);
    }
    /* the golden disk there is a valid qcow2 of the image's virtual size */
    _cleanup_free_ char *disk = micro_file("disk.qcow2");
    char sha[AL_SHA256_HEX_SIZE];
    sha_of(disk, sha);
    struct image_vol v = {0};
    ensure_ok(POOL, POOL_DIR, "micro", IMAGE_VOL_DISK, disk, sha, &v);
    _cleanup_free_ char *sh = NULL;
    assert_true(asprintf(&sh, "qemu-img check -q '%s'", v.path) > 0);
    assert_int_equal(remote_sh(sh, NULL, 0), 0);
    virStoragePoolPtr pool = virStoragePoolLookupByName(conn, POOL);
    virStorageVolPtr vol = virStorageVolLookupByName(pool, v.name);
    assert_non_null(vol);
    _cleanup_free_ char *xml = virStorageVolGetXMLDesc(vol, 0);
    assert_non_null(strstr(xml, "<format type='qcow2'/>"));
    assert_non_null(strstr(xml, "<capacity unit='bytes'>67108864</capacity>"));
    virStorageVolFree(vol);
    virStoragePoolFree(pool);
    image_vol_clear(&v);
}

/* A rebuilt image (new checksum) is uploaded again beside the old one; a
 * sweep that keeps only the new one removes the old one. */
static void test_rebuilt_image(void **state)
{
    (void)state;
    _cleanup_free_ char *disk = micro_file("disk.qcow2");
    _cleanup_free_ char *rebuilt = modified_copy(disk, "rebuilt.qcow2", -1);
    char sha_old[AL_SHA256_HEX_SIZE], sha_new[AL_SHA256_HEX_SIZE];
    sha_of(disk, sha_old);
    sha_of(rebuilt, sha_new);
    assert_string_not_equal(sha_old, sha_new);

    struct image_vol old = {0}, new = {0}, again = {0};
    ensure_ok(POOL_RB, POOL_RB_DIR, "micro", IMAGE_VOL_DISK, disk, sha_old, &old);
    assert_true(old.uploaded);
    ensure_ok(POOL_RB, POOL_RB_DIR, "micro", IMAGE_VOL_DISK, rebuilt, sha_new, &new);
    assert_true(new.uploaded);
    assert_string_not_equal(new.name, old.name);
    assert_true(has_vol(POOL_RB, old.name));

    const char *const keep[] = {new.name, NULL};
    unsigned removed = 0;
    struct al_error *err = NULL;
    if (image_vol_sweep(conn, POOL_RB, keep, &removed, &err) < 0)
        fail_msg("%s", al_error_message(err));
    assert_int_equal(removed, 2); /* the old content and its marker */
    _cleanup_free_ char *old_marker = marker_of(old.name);
    assert_false(has_vol(POOL_RB, old.name));
    assert_false(has_vol(POOL_RB, old_marker));
    ensure_ok(POOL_RB, POOL_RB_DIR, "micro", IMAGE_VOL_DISK, rebuilt, sha_new, &again);
    assert_false(again.uploaded);
    char there[AL_SHA256_HEX_SIZE];
    remote_sha(again.path, there);
    assert_string_equal(there, sha_new);
    image_vol_clear(&old);
    image_vol_clear(&new);
    image_vol_clear(&again);
}

struct cut {
    uint64_t at;      /* act once this many bytes were sent */
    const char *path; /* set: truncate it to half of at instead of cancelling */
    uint64_t calls;
};

static int on_progress(void *opaque, uint64_t sent, uint64_t total)
{
    struct cut *c = opaque;
    c->calls++;
    assert_true(sent <= total);
    if (sent < c->at)
        return 0;
    if (c->path) {
        assert_int_equal(truncate(c->path, (off_t)(c->at / 2)), 0);
        return 0;
    }
    return 1;
}

/* Nothing of the name is left, or nothing complete: no marker. */
static void assert_nothing_complete(const char *name)
{
    _cleanup_free_ char *m = marker_of(name);
    assert_false(has_vol(POOL, m));
    assert_false(has_vol(POOL, name));
}

static void create_raw_in(const char *pool_name, const char *name, uint64_t size)
{
    _cleanup_free_ char *xml = NULL;
    assert_int_equal(image_vol_xml(name, size, &xml, NULL), 0);
    virStoragePoolPtr pool = virStoragePoolLookupByName(conn, pool_name);
    assert_non_null(pool);
    virStorageVolPtr v = virStorageVolCreateXML(pool, xml, 0);
    if (!v)
        fail_msg("creating %s: %s", name, virGetLastErrorMessage());
    virStorageVolFree(v);
    virStoragePoolFree(pool);
}

static void create_raw(const char *name, uint64_t size)
{
    create_raw_in(POOL, name, size);
}

/* Uploads that fail mid-way leave nothing that looks complete, and the next
 * ensure replaces what a killed daemon left behind. */
static void test_cut_uploads(void **state)
{
    (void)state;
    _cleanup_free_ char *kernel = micro_file("vmlinuz");
    _cleanup_free_ char *copy = modified_copy(kernel, "vmlinuz-cut", 0);
    char sha[AL_SHA256_HEX_SIZE];
    sha_of(copy, sha);
    struct stat st;
    assert_int_equal(stat(copy, &st), 0);
    uint64_t size = (uint64_t)st.st_size;
    assert_true(size > 2 * 1024 * 1024);
    _cleanup_free_ char *name = NULL;
    assert_int_equal(image_vol_name("micro-cut", IMAGE_VOL_KERNEL, sha, &name, NULL), 0);
    struct image_vol v = {0};
    struct al_error *err = NULL;

    /* cancelled after 1 MiB */
    struct cut c = {.at = 1024 * 1024};
    assert_int_equal(ensure(POOL, POOL_DIR, "micro-cut", IMAGE_VOL_KERNEL, copy, sha, on_progress,
                            &c, &v, &err),
                     -ECANCELED);
    assert_true(c.calls >= 4 && c.calls < size / (256 * 1024));
    err = al_error_free(err);
    assert_null(v.name);
    assert_nothing_complete(name);

    /* the wrong checksum (the file is not what the catalogue says) */
    char sha_kernel[AL_SHA256_HEX_SIZE];
    sha_of(kernel, sha_kernel);
    _cleanup_free_ char *wrong_name = NULL;
    assert_int_equal(image_vol_name("micro-cut", IMAGE_VOL_KERNEL, sha_kernel, &wrong_name, NULL),
                     0);
    assert_int_equal(ensure(POOL, POOL_DIR, "micro-cut", IMAGE_VOL_KERNEL, copy, sha_kernel, NULL,
                            NULL, &v, &err),
                     -EBADMSG);
    assert_non_null(strstr(al_error_message(err), "expected"));
    err = al_error_free(err);
    assert_nothing_complete(wrong_name);

    /* a daemon killed mid-upload left its content without a marker (here
     * made by hand: the file's size, zeros): not present, replaced */
    create_raw(name, size);
    struct image_vol ok = {0};
    ensure_ok(POOL, POOL_DIR, "micro-cut", IMAGE_VOL_KERNEL, copy, sha, &ok);
    assert_true(ok.uploaded);
    char there[AL_SHA256_HEX_SIZE];
    remote_sha(ok.path, there);
    assert_string_equal(there, sha);

    /* a marker cut short (zeros, as a cut marker upload leaves it) does not
     * make its content complete */
    _cleanup_free_ char *m = marker_of(name);
    virStoragePoolPtr pool = virStoragePoolLookupByName(conn, POOL);
    virStorageVolPtr mv = virStorageVolLookupByName(pool, m);
    assert_non_null(mv);
    virStorageVolInfo info;
    assert_int_equal(virStorageVolGetInfoFlags(mv, &info, VIR_STORAGE_VOL_GET_PHYSICAL), 0);
    assert_int_equal(virStorageVolDelete(mv, 0), 0);
    virStorageVolFree(mv);
    virStoragePoolFree(pool);
    create_raw(m, info.allocation);
    struct image_vol again = {0};
    ensure_ok(POOL, POOL_DIR, "micro-cut", IMAGE_VOL_KERNEL, copy, sha, &again);
    assert_true(again.uploaded);
    image_vol_clear(&again);
    ensure_ok(POOL, POOL_DIR, "micro-cut", IMAGE_VOL_KERNEL, copy, sha, &again);
    assert_false(again.uploaded);
    image_vol_clear(&again);

    /* a restart's sweep removes a leftover content without its marker even
     * when the image is still wanted (and the earlier tests' volumes, not
     * kept here) */
    _cleanup_free_ char *left = NULL;
    assert_int_equal(image_vol_name("micro-cut", IMAGE_VOL_INITRD, sha, &left, NULL), 0);
    create_raw(left, 4096);
    const char *const keep[] = {left, ok.name, NULL};
    unsigned removed = 0;
    if (image_vol_sweep(conn, POOL, keep, &removed, &err) < 0)
        fail_msg("%s", al_error_message(err));
    assert_false(has_vol(POOL, left));
    assert_true(has_vol(POOL, ok.name));
    assert_true(removed >= 1);
    image_vol_clear(&ok);

    /* the file shrinks under the upload (truncated after 1 MiB went) */
    char sha_copy[AL_SHA256_HEX_SIZE];
    sha_of(copy, sha_copy);
    _cleanup_free_ char *shrink = modified_copy(copy, "vmlinuz-shrinks", 1);
    char sha_shrink[AL_SHA256_HEX_SIZE];
    sha_of(shrink, sha_shrink);
    _cleanup_free_ char *shrink_name = NULL;
    assert_int_equal(image_vol_name("micro-cut", IMAGE_VOL_KERNEL, sha_shrink, &shrink_name, NULL),
                     0);
    struct cut s = {.at = 1024 * 1024, .path = shrink};
    assert_int_equal(ensure(POOL, POOL_DIR, "micro-cut", IMAGE_VOL_KERNEL, shrink, sha_shrink,
                            on_progress, &s, &v, &err),
                     -EBADMSG);
    assert_non_null(strstr(al_error_message(err), "ended at byte"));
    err = al_error_free(err);
    assert_nothing_complete(shrink_name);
}

struct on_worker {
    virConnectPtr conn;
    struct image_vol_request req;
    struct image_vol vol;
    int result;
    char *error;
    bool done;
    uv_timer_t tick;
    unsigned ticks;
    uint64_t last_tick_ms, max_gap_ms;
};

static int upload_work(void *data, struct al_error **err)
{
    struct on_worker *w = data;
    return image_vol_ensure(w->conn, &w->req, &w->vol, err);
}

static void upload_done(void *data, int result, struct al_error *err)
{
    struct on_worker *w = data;
    w->result = result;
    w->error = err ? strdup(al_error_message(err)) : NULL;
    al_error_free(err);
    w->done = true;
}

static void on_tick(uv_timer_t *t)
{
    struct on_worker *w = t->data;
    uint64_t now = al_now_mono_ms();
    if (w->last_tick_ms && now - w->last_tick_ms > w->max_gap_ms)
        w->max_gap_ms = now - w->last_tick_ms;
    w->last_tick_ms = now;
    w->ticks++;
}

/* As the daemon will run it: libvirt's events on the uv loop, the upload on
 * the thread pool, the loop free meanwhile (a 10 ms timer keeps ticking).
 * Last: it registers the event implementation for the rest of the process. */
static void test_upload_on_worker(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct al_error *err = NULL;
    if (al_virt_event_register(&loop, &err) < 0)
        fail_msg("%s", al_error_message(err));
    _cleanup_free_ char *kernel = micro_file("vmlinuz");
    _cleanup_free_ char *copy = modified_copy(kernel, "vmlinuz-worker", 2);
    char sha[AL_SHA256_HEX_SIZE];
    sha_of(copy, sha);
    struct on_worker w = {
            .conn = virConnectOpen(uri),
            .req = {.pool = POOL,
                    .pool_dir = POOL_DIR,
                    .image = "micro-worker",
                    .role = IMAGE_VOL_KERNEL,
                    .path = copy,
                    .sha256 = sha},
    };
    assert_non_null(w.conn);
    uv_timer_init(&loop, &w.tick);
    w.tick.data = &w;
    uv_timer_start(&w.tick, on_tick, 10, 10);
    assert_int_equal(al_work_queue(&loop, upload_work, upload_done, &w, NULL), 0);
    assert_true(test_run_until(&loop, &w.done, 60000));
    if (w.result < 0)
        fail_msg("%s", w.error);
    assert_true(w.vol.uploaded);
    printf("# on a worker: %" PRIu64 " bytes in %" PRIu64 " ms, loop ticked %u times, "
           "longest gap %" PRIu64 " ms\n",
           w.vol.sent, w.vol.upload_ms, w.ticks, w.max_gap_ms);
    assert_true(w.ticks >= 5);
    char there[AL_SHA256_HEX_SIZE];
    remote_sha(w.vol.path, there);
    assert_string_equal(there, sha);
    image_vol_clear(&w.vol);
    uv_close((uv_handle_t *)&w.tick, NULL);
    virConnectClose(w.conn);
    al_virt_event_shutdown();
    test_loop_close(&loop);
}

/* One file of the sweep test: its old and new build uploaded. */
struct sweep_file {
    const char *file;
    enum image_vol_role role;
    char *rebuilt;
    char sha_old[AL_SHA256_HEX_SIZE], sha_new[AL_SHA256_HEX_SIZE];
    struct image_vol old, new;
};

static void sweep_ok(const struct image_vol_current *cur, size_t n_cur, const char *const *held,
                     unsigned removed, unsigned in_use)
{
    struct image_vol_sweep_result res = {0};
    struct al_error *err = NULL;
    uint64_t t0 = al_now_mono_ms();
    if (image_vol_sweep_unused(conn, POOL_SW, cur, n_cur, held, &res, &err) < 0)
        fail_msg("sweep: %s", al_error_message(err));
    printf("# sweep: %u removed, %u kept in use, %" PRIu64 " ms\n", res.removed, res.in_use,
           al_now_mono_ms() - t0);
    assert_int_equal(res.removed, removed);
    assert_int_equal(res.in_use, in_use);
}

static void assert_complete(const char *name, bool present)
{
    _cleanup_free_ char *m = marker_of(name);
    assert_int_equal(has_vol(POOL_SW, name), present);
    assert_int_equal(has_vol(POOL_SW, m), present);
}

/* The daemon's sweep rule (image_vol_sweep_unused()): a rebuilt image's
 * old volumes go, but only once nothing uses them: not a domain defined on
 * the host (its kernel), not an overlay volume backed by the old disk, not
 * a path the caller holds; cut uploads and stray markers go at once; an
 * image the caller does not know stays. */
static void test_sweep_unused(void **state)
{
    (void)state;
    struct sweep_file f[] = {
            {.file = "disk.qcow2", .role = IMAGE_VOL_DISK},
            {.file = "vmlinuz", .role = IMAGE_VOL_KERNEL},
            {.file = "initrd.img", .role = IMAGE_VOL_INITRD},
    };
    struct image_vol_current cur[ARRAY_SIZE(f)];
    for (size_t i = 0; i < ARRAY_SIZE(f); i++) {
        _cleanup_free_ char *path = micro_file(f[i].file);
        _cleanup_free_ char *copy = NULL;
        assert_true(asprintf(&copy, "sweep-%s", f[i].file) > 0);
        f[i].rebuilt = modified_copy(path, copy, -1);
        sha_of(path, f[i].sha_old);
        sha_of(f[i].rebuilt, f[i].sha_new);
        ensure_ok(POOL_SW, POOL_SW_DIR, "micro", f[i].role, path, f[i].sha_old, &f[i].old);
        ensure_ok(POOL_SW, POOL_SW_DIR, "micro", f[i].role, f[i].rebuilt, f[i].sha_new, &f[i].new);
        assert_true(f[i].old.uploaded && f[i].new.uploaded);
        cur[i] = (struct image_vol_current){
                .image = "micro", .role = f[i].role, .sha256 = f[i].sha_new};
    }
    /* an image the sweep is told nothing of */
    _cleanup_free_ char *kernel = micro_file("vmlinuz");
    struct image_vol other = {0};
    ensure_ok(POOL_SW, POOL_SW_DIR, "other", IMAGE_VOL_KERNEL, kernel, f[1].sha_old, &other);
    /* a cut upload of micro's initrd (no marker), and a marker whose
     * content is gone */
    static const char cut_sha[] =
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    static const char stray_sha[] =
            "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    _cleanup_free_ char *cut = NULL, *stray = NULL;
    assert_int_equal(image_vol_name("micro", IMAGE_VOL_INITRD, cut_sha, &cut, NULL), 0);
    assert_int_equal(image_vol_name("micro", IMAGE_VOL_KERNEL, stray_sha, &stray, NULL), 0);
    _cleanup_free_ char *stray_marker = marker_of(stray);
    create_raw_in(POOL_SW, cut, 4096);
    create_raw_in(POOL_SW, stray_marker, 16);

    /* the old disk backs an overlay, the old kernel boots a defined domain */
    virStoragePoolPtr pool = virStoragePoolLookupByName(conn, POOL_SW);
    assert_non_null(pool);
    _cleanup_free_ char *ovl_xml = NULL;
    assert_true(asprintf(&ovl_xml,
                         "<volume><name>sweep-overlay.qcow2</name>"
                         "<capacity unit='bytes'>67108864</capacity>"
                         "<target><format type='qcow2'/></target>"
                         "<backingStore><path>%s</path><format type='qcow2'/></backingStore>"
                         "</volume>",
                         f[0].old.path) > 0);
    virStorageVolPtr overlay = virStorageVolCreateXML(pool, ovl_xml, 0);
    if (!overlay)
        fail_msg("creating the overlay: %s", virGetLastErrorMessage());
    _cleanup_free_ char *dom_xml = NULL;
    assert_true(asprintf(&dom_xml,
                         "<domain type='qemu'><name>agentlab-sweep-test</name>"
                         "<memory unit='MiB'>64</memory>"
                         "<os><type arch='x86_64'>hvm</type><kernel>%s</kernel></os>"
                         "</domain>",
                         f[1].old.path) > 0);
    virDomainPtr dom = virDomainDefineXML(conn, dom_xml);
    if (!dom)
        fail_msg("defining the domain: %s", virGetLastErrorMessage());
    /* the old initrd: a VM's, before its domain exists */
    const char *held[] = {f[2].old.path, NULL};

    /* the cut upload and the stray marker go; the three old builds stay */
    sweep_ok(cur, ARRAY_SIZE(cur), held, 2, 3);
    assert_false(has_vol(POOL_SW, cut));
    assert_false(has_vol(POOL_SW, stray_marker));
    for (size_t i = 0; i < ARRAY_SIZE(f); i++) {
        assert_complete(f[i].old.name, true);
        assert_complete(f[i].new.name, true);
    }
    assert_complete(other.name, true);

    /* the overlay gone, the old disk and its marker go */
    assert_int_equal(virStorageVolDelete(overlay, 0), 0);
    virStorageVolFree(overlay);
    sweep_ok(cur, ARRAY_SIZE(cur), held, 2, 2);
    assert_complete(f[0].old.name, false);
    assert_complete(f[1].old.name, true);

    /* the domain and the hold gone, the old kernel and initrd go */
    assert_int_equal(virDomainUndefine(dom), 0);
    virDomainFree(dom);
    sweep_ok(cur, ARRAY_SIZE(cur), NULL, 4, 0);
    for (size_t i = 0; i < ARRAY_SIZE(f); i++) {
        assert_complete(f[i].old.name, false);
        assert_complete(f[i].new.name, true);
    }
    assert_complete(other.name, true);
    /* nothing else to do; the host's remaining copies are the new builds */
    sweep_ok(cur, ARRAY_SIZE(cur), NULL, 0, 0);
    for (size_t i = 0; i < ARRAY_SIZE(f); i++) {
        char there[AL_SHA256_HEX_SIZE];
        remote_sha(f[i].new.path, there);
        assert_string_equal(there, f[i].sha_new);
        image_vol_clear(&f[i].old);
        image_vol_clear(&f[i].new);
        free(f[i].rebuilt);
    }
    image_vol_clear(&other);
    virStoragePoolFree(pool);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_host_is_separate), cmocka_unit_test(test_upload_once),
            cmocka_unit_test(test_rebuilt_image),    cmocka_unit_test(test_cut_uploads),
            cmocka_unit_test(test_upload_on_worker), cmocka_unit_test(test_sweep_unused),
    };
    return test_exit_status(cmocka_run_group_tests(tests, setup, teardown));
}
