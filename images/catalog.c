#include "images/catalog.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

#include "images/inuse.h"
#include "runner/base/buf.h"
#include "runner/base/util.h"

static const char *const phase_names[IMAGE_PHASE_COUNT] = {"bootstrap", "disk", "seal", "checksum"};

const char *image_phase_to_string(enum image_phase p)
{
    return (unsigned)p < IMAGE_PHASE_COUNT ? phase_names[p] : "unknown";
}

struct image_info *image_info_free(struct image_info *i)
{
    if (!i)
        return NULL;
    free(i->name);
    free(i->dir);
    free(i->disk);
    free(i->format);
    free(i->kernel);
    free(i->initrd);
    free(i->cmdline);
    free(i->recipe);
    free(i->recipe_hash);
    free(i->sha256);
    free(i->kernel_version);
    free(i->filesystem_label);
    free(i->builder_version);
    free(i->guest_helper_sha256);
    for (size_t k = 0; k < i->n_packages; k++) {
        free(i->packages[k].name);
        free(i->packages[k].version);
    }
    free(i->packages);
    free(i);
    return NULL;
}

void image_info_list_free(struct image_info **v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        image_info_free(v[i]);
    free(v);
}

bool image_name_is_valid(const char *s)
{
    if (!al_name_is_valid(s))
        return false;
    size_t n = strlen(s);
    /* the lock file beside an image directory is "<name>.lock" */
    return !(n >= 5 && streq(s + n - 5, ".lock"));
}

char *image_root_path(const char *state_dir)
{
    return al_path_join(state_dir, "images");
}

char *image_dir_path(const char *state_dir, const char *name)
{
    _cleanup_free_ char *root = image_root_path(state_dir);
    return root ? al_path_join(root, name) : NULL;
}

/* ---- manifest JSON ---- */

static int parse_iso_time(const char *s, int64_t *ret_ms)
{
    struct tm tm = {0};
    const char *rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!rest)
        return -EINVAL;
    int64_t ms = 0;
    if (*rest == '.') {
        rest++;
        int digits = 0;
        while (*rest >= '0' && *rest <= '9') {
            if (digits < 3) {
                ms = ms * 10 + (*rest - '0');
                digits++;
            }
            rest++;
        }
        for (; digits < 3; digits++)
            ms *= 10;
    }
    if (!streq(rest, "Z"))
        return -EINVAL;
    time_t t = timegm(&tm);
    if (t == (time_t)-1)
        return -EINVAL;
    *ret_ms = (int64_t)t * 1000 + ms;
    return 0;
}

static const char *json_str(yajl_val root, const char *key)
{
    const char *path[] = {key, NULL};
    yajl_val v = yajl_tree_get(root, path, yajl_t_string);
    return v ? YAJL_GET_STRING(v) : NULL;
}

static int json_u64(yajl_val root, const char *key, uint64_t *ret)
{
    const char *path[] = {key, NULL};
    yajl_val v = yajl_tree_get(root, path, yajl_t_number);
    if (!v)
        return -ENOENT;
    if (!YAJL_IS_INTEGER(v) || YAJL_GET_INTEGER(v) < 0)
        return -EINVAL;
    *ret = (uint64_t)YAJL_GET_INTEGER(v);
    return 0;
}

static int dup_opt(const char *s, char **ret)
{
    if (!s) {
        *ret = NULL;
        return 0;
    }
    *ret = strdup(s);
    return *ret ? 0 : -ENOMEM;
}

/* A manifest names files inside its directory: plain names only. */
static bool is_plain_file_name(const char *s)
{
    return s && s[0] && !strchr(s, '/') && !streq(s, ".") && !streq(s, "..");
}

static int pkg_cmp(const void *a, const void *b)
{
    const struct image_package *x = a, *y = b;
    return strcmp(x->name, y->name);
}

static void yajl_tree_freep(yajl_val *v)
{
    if (*v)
        yajl_tree_free(*v);
}

static int manifest_parse(const char *dir, const char *text, struct image_info **ret,
                          struct al_error **err)
{
    char errbuf[256] = "";
    _cleanup_(yajl_tree_freep) yajl_val root = yajl_tree_parse(text, errbuf, sizeof(errbuf));
    if (!root)
        return al_error_set(err, EINVAL, "invalid JSON: %s", errbuf[0] ? errbuf : "parse error");
    if (!YAJL_IS_OBJECT(root))
        return al_error_set(err, EINVAL, "not a JSON object");

    uint64_t schema = 0;
    if (json_u64(root, "schema", &schema) < 0 || schema != IMAGE_MANIFEST_SCHEMA)
        return al_error_set(err, EINVAL, "unsupported manifest schema (want %d)",
                            IMAGE_MANIFEST_SCHEMA);

    const char *name = json_str(root, "name");
    const char *disk = json_str(root, "disk");
    const char *kernel = json_str(root, "kernel");
    const char *initrd = json_str(root, "initrd");
    const char *cmdline = json_str(root, "cmdline");
    const char *created = json_str(root, "created");
    if (!name || !image_name_is_valid(name))
        return al_error_set(err, EINVAL, "missing or invalid \"name\"");
    if (!is_plain_file_name(disk) || !is_plain_file_name(kernel) || !is_plain_file_name(initrd))
        return al_error_set(err, EINVAL, "\"disk\", \"kernel\" and \"initrd\" must be file names");
    if (!cmdline)
        return al_error_set(err, EINVAL, "missing \"cmdline\"");

    _cleanup_image_info_ struct image_info *i = calloc(1, sizeof(*i));
    if (!i)
        return al_error_set(err, ENOMEM, "reading manifest");
    i->dir = strdup(dir);
    i->disk = al_path_join(dir, disk);
    i->kernel = al_path_join(dir, kernel);
    i->initrd = al_path_join(dir, initrd);
    const char *format = json_str(root, "format");
    if (!i->dir || !i->disk || !i->kernel || !i->initrd || dup_opt(name, &i->name) < 0 ||
        dup_opt(format ? format : "qcow2", &i->format) < 0 || dup_opt(cmdline, &i->cmdline) < 0 ||
        dup_opt(json_str(root, "recipe"), &i->recipe) < 0 ||
        dup_opt(json_str(root, "recipe_hash"), &i->recipe_hash) < 0 ||
        dup_opt(json_str(root, "sha256"), &i->sha256) < 0 ||
        dup_opt(json_str(root, "kernel_version"), &i->kernel_version) < 0 ||
        dup_opt(json_str(root, "filesystem_label"), &i->filesystem_label) < 0 ||
        dup_opt(json_str(root, "builder_version"), &i->builder_version) < 0 ||
        dup_opt(json_str(root, "guest_helper_sha256"), &i->guest_helper_sha256) < 0)
        return al_error_set(err, ENOMEM, "reading manifest");

    if (json_u64(root, "size", &i->size) == -EINVAL ||
        json_u64(root, "virtual_size", &i->virtual_size) == -EINVAL)
        return al_error_set(err, EINVAL, "\"size\" and \"virtual_size\" must be byte counts");
    if (created && parse_iso_time(created, &i->created_ms) < 0)
        return al_error_set(err, EINVAL, "bad \"created\" time \"%s\"", created);

    const char *bpath[] = {"build_ms", NULL};
    yajl_val build = yajl_tree_get(root, bpath, yajl_t_object);
    for (int p = 0; build && p < IMAGE_PHASE_COUNT; p++)
        (void)json_u64(build, phase_names[p], &i->build_ms[p]);

    const char *ppath[] = {"packages", NULL};
    yajl_val pkgs = yajl_tree_get(root, ppath, yajl_t_object);
    if (pkgs && YAJL_GET_OBJECT(pkgs)->len > 0) {
        size_t n = YAJL_GET_OBJECT(pkgs)->len;
        i->packages = calloc(n, sizeof(*i->packages));
        if (!i->packages)
            return al_error_set(err, ENOMEM, "reading manifest");
        for (size_t k = 0; k < n; k++) {
            yajl_val v = YAJL_GET_OBJECT(pkgs)->values[k];
            if (!YAJL_IS_STRING(v))
                return al_error_set(err, EINVAL, "package versions must be strings");
            i->packages[k].name = strdup(YAJL_GET_OBJECT(pkgs)->keys[k]);
            i->packages[k].version = strdup(v->u.string);
            i->n_packages++;
            if (!i->packages[k].name || !i->packages[k].version)
                return al_error_set(err, ENOMEM, "reading manifest");
        }
        qsort(i->packages, i->n_packages, sizeof(*i->packages), pkg_cmp);
    }
    *ret = TAKE_PTR(i);
    return 0;
}

int image_manifest_read(const char *dir, struct image_info **ret, struct al_error **err)
{
    _cleanup_free_ char *path = al_path_join(dir, IMAGE_MANIFEST_FILE);
    if (!path)
        return al_error_set(err, ENOMEM, "reading manifest");
    _cleanup_free_ char *text = NULL;
    int r = al_read_file(path, IMAGE_MANIFEST_MAX, &text, NULL, err);
    if (r < 0)
        return r;
    r = manifest_parse(dir, text, ret, err);
    if (r < 0)
        return al_error_wrap(err, "%s", path);
    return 0;
}

static void yajl_gen_freep(yajl_gen *g)
{
    if (*g)
        yajl_gen_free(*g);
}

static yajl_gen_status gen_str(yajl_gen g, const char *s)
{
    return yajl_gen_string(g, (const unsigned char *)s, strlen(s));
}

static yajl_gen_status gen_kv_str(yajl_gen g, const char *k, const char *v)
{
    yajl_gen_status st = gen_str(g, k);
    if (st != yajl_gen_status_ok)
        return st;
    return v ? gen_str(g, v) : yajl_gen_null(g);
}

static yajl_gen_status gen_kv_u64(yajl_gen g, const char *k, uint64_t v)
{
    yajl_gen_status st = gen_str(g, k);
    if (st != yajl_gen_status_ok)
        return st;
    /* yajl integers are long long; sizes never come near 2^63 */
    return yajl_gen_integer(g, v > INT64_MAX ? INT64_MAX : (long long)v);
}

static const char *base_name(const char *p)
{
    const char *s = p ? strrchr(p, '/') : NULL;
    return s ? s + 1 : p;
}

static int gen_info(yajl_gen g, const struct image_info *i, bool absolute)
{
    char created[32] = "";
    al_format_time_ms(i->created_ms, created, sizeof(created));
    yajl_gen_status st = yajl_gen_map_open(g);
#define CHECK(x)                      \
    do {                              \
        if (st == yajl_gen_status_ok) \
            st = (x);                 \
    } while (0)
    CHECK(gen_str(g, "schema"));
    CHECK(yajl_gen_integer(g, IMAGE_MANIFEST_SCHEMA));
    CHECK(gen_kv_str(g, "name", i->name));
    CHECK(gen_kv_str(g, "recipe", i->recipe));
    CHECK(gen_kv_str(g, "recipe_hash", i->recipe_hash));
    CHECK(gen_kv_str(g, "created", created));
    CHECK(gen_kv_str(g, "builder_version", i->builder_version));
    if (absolute)
        CHECK(gen_kv_str(g, "dir", i->dir));
    CHECK(gen_kv_str(g, "disk", absolute ? i->disk : base_name(i->disk)));
    CHECK(gen_kv_str(g, "format", i->format ? i->format : "qcow2"));
    CHECK(gen_kv_u64(g, "size", i->size));
    CHECK(gen_kv_u64(g, "virtual_size", i->virtual_size));
    CHECK(gen_kv_str(g, "sha256", i->sha256));
    CHECK(gen_kv_str(g, "filesystem_label", i->filesystem_label));
    CHECK(gen_kv_str(g, "kernel", absolute ? i->kernel : base_name(i->kernel)));
    CHECK(gen_kv_str(g, "initrd", absolute ? i->initrd : base_name(i->initrd)));
    CHECK(gen_kv_str(g, "kernel_version", i->kernel_version));
    CHECK(gen_kv_str(g, "cmdline", i->cmdline));
    CHECK(gen_kv_str(g, "guest_helper_sha256", i->guest_helper_sha256));
    CHECK(gen_str(g, "build_ms"));
    CHECK(yajl_gen_map_open(g));
    for (int p = 0; p < IMAGE_PHASE_COUNT; p++)
        CHECK(gen_kv_u64(g, phase_names[p], i->build_ms[p]));
    CHECK(yajl_gen_map_close(g));
    CHECK(gen_str(g, "packages"));
    CHECK(yajl_gen_map_open(g));
    for (size_t k = 0; k < i->n_packages; k++)
        CHECK(gen_kv_str(g, i->packages[k].name, i->packages[k].version));
    CHECK(yajl_gen_map_close(g));
    CHECK(yajl_gen_map_close(g));
#undef CHECK
    return st == yajl_gen_status_ok ? 0 : -EINVAL;
}

static int gen_finish(yajl_gen g, char **ret_json)
{
    const unsigned char *buf = NULL;
    size_t len = 0;
    if (yajl_gen_get_buf(g, &buf, &len) != yajl_gen_status_ok)
        return -EINVAL;
    char *s = malloc(len + 2);
    if (!s)
        return -ENOMEM;
    memcpy(s, buf, len);
    /* beautified output ends in a newline already */
    if (len == 0 || s[len - 1] != '\n')
        s[len++] = '\n';
    s[len] = '\0';
    *ret_json = s;
    return 0;
}

int image_info_to_json(struct image_info *const *v, size_t n, bool as_array, char **ret_json,
                       struct al_error **err)
{
    _cleanup_(yajl_gen_freep) yajl_gen g = yajl_gen_alloc(NULL);
    if (!g)
        return al_error_set(err, ENOMEM, "formatting JSON");
    yajl_gen_config(g, yajl_gen_beautify, 1);
    yajl_gen_config(g, yajl_gen_indent_string, "  ");
    if (as_array && yajl_gen_array_open(g) != yajl_gen_status_ok)
        return al_error_set(err, EINVAL, "formatting JSON");
    for (size_t i = 0; i < n; i++) {
        if (gen_info(g, v[i], true) < 0)
            return al_error_set(err, EINVAL, "formatting JSON for image %s", v[i]->name);
    }
    if (as_array && yajl_gen_array_close(g) != yajl_gen_status_ok)
        return al_error_set(err, EINVAL, "formatting JSON");
    if (gen_finish(g, ret_json) < 0)
        return al_error_set(err, ENOMEM, "formatting JSON");
    return 0;
}

int image_manifest_write(const char *dir, const struct image_info *info, struct al_error **err)
{
    if (!info->name || !info->disk || !info->kernel || !info->initrd || !info->cmdline)
        return al_error_set(err, EINVAL, "manifest needs name, disk, kernel, initrd and cmdline");
    _cleanup_(yajl_gen_freep) yajl_gen g = yajl_gen_alloc(NULL);
    if (!g)
        return al_error_set(err, ENOMEM, "writing manifest");
    yajl_gen_config(g, yajl_gen_beautify, 1);
    yajl_gen_config(g, yajl_gen_indent_string, "  ");
    _cleanup_free_ char *json = NULL;
    if (gen_info(g, info, false) < 0 || gen_finish(g, &json) < 0)
        return al_error_set(err, EINVAL, "formatting manifest for %s", info->name);
    _cleanup_free_ char *path = al_path_join(dir, IMAGE_MANIFEST_FILE);
    if (!path)
        return al_error_set(err, ENOMEM, "writing manifest");
    return al_write_file_atomic(path, json, strlen(json), 0644, err);
}

/* ---- listing ---- */

static int info_cmp(const void *a, const void *b)
{
    const struct image_info *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

static void closedirp(DIR **d)
{
    if (*d)
        closedir(*d);
}

int image_list(const char *state_dir, struct image_info ***ret, size_t *ret_n,
               struct al_error **err)
{
    _cleanup_free_ char *root = image_root_path(state_dir);
    if (!root)
        return al_error_set(err, ENOMEM, "listing images");
    struct image_info **v = NULL;
    size_t n = 0;
    _cleanup_(closedirp) DIR *d = opendir(root);
    if (!d) {
        if (errno != ENOENT)
            return al_error_set_errno(err, errno, "opening %s", root);
    } else {
        struct dirent *de;
        while ((de = readdir(d))) {
            /* dot entries are builds in progress, removals and lock files */
            if (de->d_name[0] == '.' || !image_name_is_valid(de->d_name))
                continue;
            _cleanup_free_ char *dir = al_path_join(root, de->d_name);
            if (!dir)
                goto oom;
            struct image_info *i = NULL;
            /* an unreadable or foreign manifest is not a complete image */
            if (image_manifest_read(dir, &i, NULL) < 0)
                continue;
            if (!streq(i->name, de->d_name)) {
                image_info_free(i);
                continue;
            }
            struct image_info **nv = realloc(v, (n + 1) * sizeof(*v));
            if (!nv) {
                image_info_free(i);
                goto oom;
            }
            v = nv;
            v[n++] = i;
        }
    }
    if (n > 1)
        qsort(v, n, sizeof(*v), info_cmp);
    *ret = v;
    *ret_n = n;
    return 0;
oom:
    image_info_list_free(v, n);
    return al_error_set(err, ENOMEM, "listing images");
}

int image_find(const char *state_dir, const char *name, struct image_info **ret,
               struct al_error **err)
{
    if (!image_name_is_valid(name))
        return al_error_set(err, EINVAL, "invalid image name \"%s\"", name);
    _cleanup_free_ char *dir = image_dir_path(state_dir, name);
    if (!dir)
        return al_error_set(err, ENOMEM, "finding image");
    struct image_info *i = NULL;
    _cleanup_error_ struct al_error *rerr = NULL;
    int r = image_manifest_read(dir, &i, &rerr);
    if (r == 0) {
        if (streq(i->name, name)) {
            *ret = i;
            return 0;
        }
        image_info_free(i);
    } else if (r != -ENOENT) {
        return al_error_move(err, &rerr);
    }

    struct image_info **v = NULL;
    size_t n = 0;
    r = image_list(state_dir, &v, &n, err);
    if (r < 0)
        return r;
    _cleanup_buf_ struct al_buf names = AL_BUF_INIT;
    for (size_t k = 0; k < n; k++)
        al_buf_printf(&names, "%s%s", k ? ", " : "", v[k]->name);
    image_info_list_free(v, n);
    if (n == 0)
        return al_error_set(err, ENOENT,
                            "no image \"%s\" (there are no images; build one with "
                            "'agentlab image build %s')",
                            name, name);
    return al_error_set(err, ENOENT, "no image \"%s\" (available: %s)", name, names.data);
}

/* ---- locking and users ---- */

int image_lock(const char *state_dir, const char *name, bool exclusive, int timeout_ms,
               struct al_error **err)
{
    _cleanup_free_ char *root = image_root_path(state_dir);
    if (!root)
        return al_error_set(err, ENOMEM, "locking image");
    int r = al_mkdir_p(root, 0755, err);
    if (r < 0)
        return r;
    _cleanup_free_ char *path = NULL, *busy = NULL;
    if (asprintf(&path, "%s/.%s.lock", root, name) < 0 ||
        asprintf(&busy, "image \"%s\" is locked by another agentlab process", name) < 0)
        return al_error_set(err, ENOMEM, "locking image");
    return image_lock_path(path, exclusive, false, timeout_ms, busy, err);
}

int image_lock_path(const char *path, bool exclusive, bool inherit, int timeout_ms,
                    const char *busy, struct al_error **err)
{
    _cleanup_close_ int fd =
            open(path, O_RDWR | O_CREAT | O_NOFOLLOW | (inherit ? 0 : O_CLOEXEC), 0644);
    if (fd < 0)
        return al_error_set_errno(err, errno, "opening %s", path);
    uint64_t deadline = al_now_mono_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        if (flock(fd, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) == 0)
            return TAKE_FD(fd);
        if (errno != EWOULDBLOCK && errno != EINTR)
            return al_error_set_errno(err, errno, "locking %s", path);
        if (al_now_mono_ms() >= deadline)
            return al_error_set(err, EBUSY, "%s", busy);
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static bool pid_alive(pid_t pid)
{
    return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

int image_live_users(const char *dir, pid_t **ret_pids, size_t *ret_n, struct al_error **err)
{
    _cleanup_(closedirp) DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) {
            if (ret_pids)
                *ret_pids = NULL;
            *ret_n = 0;
            return 0;
        }
        return al_error_set_errno(err, errno, "opening %s", dir);
    }
    _cleanup_free_ pid_t *pids = NULL;
    size_t n = 0;
    struct dirent *de;
    size_t plen = strlen(IMAGE_INUSE_PREFIX);
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, IMAGE_INUSE_PREFIX, plen) != 0)
            continue;
        int pid = 0;
        if (al_parse_int(de->d_name + plen, 1, INT32_MAX, &pid) < 0)
            continue;
        if (!pid_alive(pid)) {
            (void)unlinkat(dirfd(d), de->d_name, 0);
            continue;
        }
        pid_t *np = realloc(pids, (n + 1) * sizeof(*pids));
        if (!np)
            return al_error_set(err, ENOMEM, "listing image users");
        pids = np;
        pids[n++] = pid;
    }
    if (ret_pids)
        *ret_pids = TAKE_PTR(pids);
    *ret_n = n;
    return 0;
}

int image_use_acquire(const char *state_dir, const char *name, pid_t pid, char **ret_path,
                      struct al_error **err)
{
    _cleanup_close_ int lock = image_lock(state_dir, name, false, 30000, err);
    if (lock < 0)
        return lock;
    _cleanup_image_info_ struct image_info *info = NULL;
    int r = image_find(state_dir, name, &info, err);
    if (r < 0)
        return r;
    _cleanup_free_ char *path = NULL;
    if (asprintf(&path, "%s/" IMAGE_INUSE_PREFIX "%d", info->dir, (int)pid) < 0)
        return al_error_set(err, ENOMEM, "marking image in use");
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return al_error_set_errno(err, errno, "creating %s", path);
    *ret_path = TAKE_PTR(path);
    return 0;
}

int image_use_release(const char *path, struct al_error **err)
{
    if (!path)
        return 0;
    if (unlink(path) < 0 && errno != ENOENT)
        return al_error_set_errno(err, errno, "removing %s", path);
    return 0;
}

int image_remove(const char *state_dir, const char *name, const char *libvirt_uri,
                 struct al_error **err)
{
    if (!image_name_is_valid(name))
        return al_error_set(err, EINVAL, "invalid image name \"%s\"", name);
    _cleanup_free_ char *dir = image_dir_path(state_dir, name);
    if (!dir)
        return al_error_set(err, ENOMEM, "removing image");
    struct stat st;
    int r;
    if (lstat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        _cleanup_image_info_ struct image_info *unused = NULL;
        r = image_find(state_dir, name, &unused, err);
        return r < 0 ? r : al_error_set(err, ENOENT, "no image \"%s\"", name);
    }
    _cleanup_close_ int lock = image_lock(state_dir, name, true, 0, err);
    if (lock < 0)
        return lock;
    if (lstat(dir, &st) < 0)
        return al_error_set(err, ENOENT, "no image \"%s\"", name);

    _cleanup_free_ pid_t *pids = NULL;
    size_t n = 0;
    r = image_live_users(dir, &pids, &n, err);
    if (r < 0)
        return r;
    if (n > 0)
        return al_error_set(err, EBUSY, "image \"%s\" is in use by process %d%s", name,
                            (int)pids[0], n > 1 ? " and others" : "");
    if (libvirt_uri) {
        _cleanup_strv_ char **domains = NULL;
        r = inuse_libvirt_domains(libvirt_uri, dir, &domains, err);
        if (r < 0)
            return al_error_wrap(err, "checking whether image \"%s\" is in use", name);
        if (domains && domains[0])
            return al_error_set(err, EBUSY, "image \"%s\" is in use by libvirt domain %s%s", name,
                                domains[0], domains[1] ? " and others" : "");
    }

    _cleanup_free_ char *suffix = al_random_hex(4);
    _cleanup_free_ char *root = image_root_path(state_dir);
    _cleanup_free_ char *trash = NULL;
    if (!suffix || !root || asprintf(&trash, "%s/.rm-%s-%s", root, name, suffix) < 0)
        return al_error_set(err, ENOMEM, "removing image");
    if (rename(dir, trash) < 0)
        return al_error_set_errno(err, errno, "renaming %s", dir);
    return al_rm_rf(trash, err);
}
