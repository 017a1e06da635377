#include "images/recipe.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "images/catalog.h"
#include "runner/base/buf.h"
#include "runner/base/util.h"

#ifndef AL_DATADIR
#define AL_DATADIR "/usr/local/share"
#endif

#define RECIPE_MAX_LIST  512
#define RECIPE_MAX_DEPTH 16

enum value_type {
    V_STRING,
    V_WORDS, /* whitespace/comma separated words, appended over repeated lines */
    V_LINES, /* one entry per line */
    V_SIZE,
    V_BOOL,
};

struct recipe_key {
    const char *section;
    const char *name;
    enum value_type type;
    size_t offset;
};

#define R(f) offsetof(struct recipe, f)
static const struct recipe_key keys[] = {
        {"recipe", "description", V_STRING, R(description)},
        {"bootstrap", "suite", V_STRING, R(suite)},
        {"bootstrap", "variant", V_STRING, R(variant)},
        {"bootstrap", "components", V_WORDS, R(components)},
        {"bootstrap", "packages", V_WORDS, R(packages)},
        {"bootstrap", "mirror", V_LINES, R(mirrors)},
        {"bootstrap", "dpkg_exclude", V_WORDS, R(dpkg_exclude)},
        {"bootstrap", "dpkg_include", V_WORDS, R(dpkg_include)},
        {"bootstrap", "environment", V_WORDS, R(environment)},
        {"disk", "size", V_SIZE, R(size)},
        {"disk", "filesystem", V_STRING, R(filesystem)},
        {"disk", "label", V_STRING, R(label)},
        {"boot", "cmdline", V_STRING, R(cmdline)},
        {"seal", "mask", V_WORDS, R(mask)},
        {"seal", "user", V_STRING, R(user)},
        {"seal", "user_sudo", V_BOOL, R(user_sudo)},
        {"seal", "hostname", V_STRING, R(hostname)},
};
#undef R

struct recipe *recipe_free(struct recipe *r)
{
    if (!r)
        return NULL;
    free(r->name);
    free(r->dir);
    free(r->hooks_dir);
    free(r->rootfs_dir);
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        void *field = (char *)r + keys[i].offset;
        if (keys[i].type == V_STRING)
            free(*(char **)field);
        else if (keys[i].type == V_WORDS || keys[i].type == V_LINES)
            strv_free(*(char ***)field);
    }
    free(r);
    return NULL;
}

static int strv_append(char ***v, const char *s)
{
    size_t n = 0;
    while (*v && (*v)[n])
        n++;
    if (n >= RECIPE_MAX_LIST)
        return -E2BIG;
    char *copy = strdup(s);
    char **nv = copy ? realloc(*v, (n + 2) * sizeof(char *)) : NULL;
    if (!nv) {
        free(copy);
        return -ENOMEM;
    }
    nv[n] = copy;
    nv[n + 1] = NULL;
    *v = nv;
    return 0;
}

struct parse_state {
    struct recipe *r;
    char *error; /* first error, without the line prefix */
};

static int fail(struct parse_state *st, const char *fmt, ...) _printf_(2, 3);
static int fail(struct parse_state *st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    al_first_vformat(&st->error, fmt, ap);
    va_end(ap);
    return 0; /* inih: stop with this line's number */
}

static bool printable(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return false;
    return true;
}

static int handler(void *user, const char *section, const char *name, const char *value)
{
    struct parse_state *st = user;
    if (!name)
        return 1; /* a section header alone */
    const struct recipe_key *k = NULL;
    bool section_known = false;
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        if (streq(keys[i].section, section)) {
            section_known = true;
            if (streq(keys[i].name, name))
                k = &keys[i];
        }
    }
    if (!section_known)
        return fail(st, "unknown section [%s] (known: recipe, bootstrap, disk, boot, seal)",
                    section);
    if (!k)
        return fail(st, "unknown key \"%s\" in [%s]", name, section);
    if (!printable(value))
        return fail(st, "key \"%s\": control characters in value", name);
    void *field = (char *)st->r + k->offset;
    switch (k->type) {
    case V_STRING: {
        char **s = field;
        char *copy = strdup(value);
        if (!copy)
            return fail(st, "out of memory");
        free(*s);
        *s = copy;
        return 1;
    }
    case V_LINES:
        if (!value[0])
            return 1;
        if (strv_append(field, value) < 0)
            return fail(st, "key \"%s\": too many entries", name);
        return 1;
    case V_WORDS: {
        _cleanup_free_ char *copy = strdup(value);
        if (!copy)
            return fail(st, "out of memory");
        char *save = NULL;
        for (char *w = strtok_r(copy, " \t,", &save); w; w = strtok_r(NULL, " \t,", &save)) {
            if (strv_append(field, w) < 0)
                return fail(st, "key \"%s\": too many entries", name);
        }
        return 1;
    }
    case V_SIZE:
        if (al_parse_size(value, field) < 0)
            return fail(st, "key \"%s\": bad size \"%s\" (expected e.g. 8G)", name, value);
        return 1;
    case V_BOOL:
        if (al_parse_bool(value, field) < 0)
            return fail(st, "key \"%s\": bad boolean \"%s\" (expected yes or no)", name, value);
        return 1;
    }
    return fail(st, "internal error");
}

static int set_default(char **field, const char *value)
{
    if (*field)
        return 0;
    *field = strdup(value);
    return *field ? 0 : -ENOMEM;
}

static bool valid_word(const char *s, const char *extra)
{
    if (!s || !s[0])
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr(extra, c)))
            return false;
    }
    return true;
}

static int validate(struct recipe *r, struct al_error **err)
{
    const char *f = RECIPE_FILE;
    if (!r->suite)
        return al_error_set(err, EINVAL, "%s: [bootstrap] suite is required", f);
    if (!valid_word(r->suite, "-._"))
        return al_error_set(err, EINVAL, "%s: bad suite \"%s\"", f, r->suite);
    if (!r->packages)
        return al_error_set(err, EINVAL, "%s: [bootstrap] packages is required", f);
    for (char **p = r->packages; *p; p++)
        if (!valid_word(*p, "+-.:_=/"))
            return al_error_set(err, EINVAL, "%s: bad package name \"%s\"", f, *p);
    for (char **p = r->components; p && *p; p++)
        if (!valid_word(*p, "-_/"))
            return al_error_set(err, EINVAL, "%s: bad component \"%s\"", f, *p);
    for (char **p = r->environment; p && *p; p++) {
        const char *eq = strchr(*p, '=');
        if (!eq || eq == *p)
            return al_error_set(err, EINVAL, "%s: environment entry \"%s\" is not KEY=VALUE", f,
                                *p);
    }
    for (char **p = r->mask; p && *p; p++)
        if (!valid_word(*p, "-_.@:\\"))
            return al_error_set(err, EINVAL, "%s: bad unit name \"%s\"", f, *p);
    if (!valid_word(r->variant, "-_"))
        return al_error_set(err, EINVAL, "%s: bad variant \"%s\"", f, r->variant);
    if (!streq(r->filesystem, "ext4") && !streq(r->filesystem, "ext3") &&
        !streq(r->filesystem, "ext2") && !streq(r->filesystem, "xfs") &&
        !streq(r->filesystem, "btrfs"))
        return al_error_set(err, EINVAL, "%s: filesystem \"%s\" (expected ext4, xfs or btrfs)", f,
                            r->filesystem);
    if (!valid_word(r->label, "-_") || strlen(r->label) > 16)
        return al_error_set(err, EINVAL, "%s: label \"%s\" (1-16 of [A-Za-z0-9_-])", f, r->label);
    if (r->size < (512ull << 20) || r->size > (2ull << 40))
        return al_error_set(err, EINVAL, "%s: size must be between 512M and 2T", f);
    if (!valid_word(r->user, "-_") || r->user[0] == '-' || (r->user[0] >= '0' && r->user[0] <= '9'))
        return al_error_set(err, EINVAL, "%s: bad user name \"%s\"", f, r->user);
    if (!valid_word(r->hostname, "-"))
        return al_error_set(err, EINVAL, "%s: bad hostname \"%s\"", f, r->hostname);
    if (!strstr(r->cmdline, "root="))
        return al_error_set(err, EINVAL, "%s: [boot] cmdline must name the root device", f);
    return 0;
}

static char *existing_dir(const char *dir, const char *sub)
{
    char *p = al_path_join(dir, sub);
    struct stat st;
    if (p && stat(p, &st) == 0 && S_ISDIR(st.st_mode))
        return p;
    free(p);
    return NULL;
}

int recipe_load(const char *dir, struct recipe **ret, struct al_error **err)
{
    char abs[PATH_MAX];
    if (!realpath(dir, abs))
        return al_error_set_errno(err, errno, "recipe directory %s", dir);
    _cleanup_free_ char *path = al_path_join(abs, RECIPE_FILE);
    if (!path)
        return al_error_set(err, ENOMEM, "loading recipe");
    _cleanup_free_ char *text = NULL;
    int r = al_read_file(path, RECIPE_MAX_BYTES, &text, NULL, err);
    if (r < 0)
        return r;

    _cleanup_recipe_ struct recipe *rc = calloc(1, sizeof(*rc));
    if (!rc)
        return al_error_set(err, ENOMEM, "loading recipe");
    struct parse_state st = {.r = rc};
    int line = ini_parse_string(text, handler, &st);
    if (line != 0) {
        _cleanup_free_ char *msg = st.error;
        if (line < 0)
            return al_error_set(err, ENOMEM, "%s: cannot parse", path);
        return al_error_set(err, EINVAL, "%s:%d: %s", path, line, msg ? msg : "syntax error");
    }
    const char *base = strrchr(abs, '/');
    rc->name = strdup(base ? base + 1 : abs);
    rc->dir = strdup(abs);
    if (!rc->name || !rc->dir || set_default(&rc->variant, "minbase") < 0 ||
        set_default(&rc->filesystem, "ext4") < 0 || set_default(&rc->label, "agentlab-root") < 0 ||
        set_default(&rc->cmdline, "root=/dev/vda rw console=ttyS0") < 0 ||
        set_default(&rc->user, "agentlab") < 0 || set_default(&rc->hostname, "agentlab") < 0 ||
        (!rc->components && strv_append(&rc->components, "main") < 0))
        return al_error_set(err, ENOMEM, "loading recipe");
    if (rc->size == 0)
        rc->size = 8ull << 30;
    if (!image_name_is_valid(rc->name))
        return al_error_set(err, EINVAL, "%s: \"%s\" is not a valid recipe name", abs, rc->name);
    r = validate(rc, err);
    if (r < 0)
        return al_error_wrap(err, "recipe %s", rc->name);
    rc->hooks_dir = existing_dir(abs, "hooks");
    rc->rootfs_dir = existing_dir(abs, "rootfs");
    *ret = TAKE_PTR(rc);
    return 0;
}

char **recipe_search_path(const char *extra)
{
    _cleanup_strv_ char **v = NULL;
    if (extra && strv_append(&v, extra) < 0)
        return NULL;
    const char *env = getenv("AGENTLAB_RECIPES");
    if (env && env[0]) {
        _cleanup_free_ char *copy = strdup(env);
        if (!copy)
            return NULL;
        char *save = NULL;
        for (char *p = strtok_r(copy, ":", &save); p; p = strtok_r(NULL, ":", &save))
            if (strv_append(&v, p) < 0)
                return NULL;
    }
    if (strv_append(&v, "/etc/agentlab/recipes") < 0 ||
        strv_append(&v, AL_DATADIR "/agentlab/recipes") < 0)
        return NULL;
#ifdef AL_SOURCE_RECIPES
    if (strv_append(&v, AL_SOURCE_RECIPES) < 0)
        return NULL;
#endif
    return TAKE_PTR(v);
}

static bool has_recipe_file(const char *dir, const char *name)
{
    _cleanup_free_ char *path = NULL;
    if (asprintf(&path, "%s/%s/%s", dir, name, RECIPE_FILE) < 0)
        return false;
    return access(path, R_OK) == 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int recipe_list(char *const *search_path, char ***ret_names, struct al_error **err)
{
    _cleanup_strv_ char **names = calloc(1, sizeof(char *));
    if (!names)
        return al_error_set(err, ENOMEM, "listing recipes");
    for (char *const *d = search_path; d && *d; d++) {
        DIR *dir = opendir(*d);
        if (!dir)
            continue;
        struct dirent *de;
        while ((de = readdir(dir))) {
            if (de->d_name[0] == '.' || !image_name_is_valid(de->d_name) ||
                !has_recipe_file(*d, de->d_name))
                continue;
            bool dup = false;
            for (char **n = names; *n && !dup; n++)
                dup = streq(*n, de->d_name);
            if (!dup && strv_append(&names, de->d_name) < 0) {
                closedir(dir);
                return al_error_set(err, ENOMEM, "listing recipes");
            }
        }
        closedir(dir);
    }
    size_t n = 0;
    while (names[n])
        n++;
    qsort(names, n, sizeof(char *), cmp_str);
    *ret_names = TAKE_PTR(names);
    return 0;
}

int recipe_find(char *const *search_path, const char *name, char **ret_dir, struct al_error **err)
{
    if (!image_name_is_valid(name))
        return al_error_set(err, EINVAL, "invalid recipe name \"%s\"", name);
    for (char *const *d = search_path; d && *d; d++) {
        if (has_recipe_file(*d, name)) {
            char *dir = al_path_join(*d, name);
            if (!dir)
                return al_error_set(err, ENOMEM, "finding recipe");
            *ret_dir = dir;
            return 0;
        }
    }
    _cleanup_strv_ char **names = NULL;
    _cleanup_buf_ struct al_buf list = AL_BUF_INIT;
    if (recipe_list(search_path, &names, NULL) == 0)
        for (char **n = names; *n; n++)
            al_buf_printf(&list, "%s%s", n == names ? "" : ", ", *n);
    _cleanup_buf_ struct al_buf where = AL_BUF_INIT;
    for (char *const *d = search_path; d && *d; d++)
        al_buf_printf(&where, "%s%s", d == search_path ? "" : ":", *d);
    return al_error_set(err, ENOENT, "unknown recipe \"%s\" (available: %s; searched %s)", name,
                        list.len ? list.data : "none", where.len ? where.data : "nothing");
}

static int hash_tree_at(const char *root, const char *rel, int depth, struct al_sha256 *ctx,
                        struct al_error **err)
{
    if (depth > RECIPE_MAX_DEPTH)
        return al_error_set(err, ELOOP, "%s/%s: directories nested too deep", root, rel);
    _cleanup_free_ char *dir = rel[0] ? al_path_join(root, rel) : strdup(root);
    if (!dir)
        return al_error_set(err, ENOMEM, "hashing recipe");
    struct dirent **ents = NULL;
    int n = scandir(dir, &ents, NULL, NULL);
    if (n < 0)
        return al_error_set_errno(err, errno, "reading %s", dir);
    /* byte order, not the locale's */
    char **names = calloc((size_t)n + 1, sizeof(char *));
    int r = names ? 0 : al_error_set(err, ENOMEM, "hashing recipe");
    size_t nn = 0;
    for (int i = 0; i < n; i++) {
        if (r == 0 && !streq(ents[i]->d_name, ".") && !streq(ents[i]->d_name, "..")) {
            names[nn] = strdup(ents[i]->d_name);
            if (!names[nn])
                r = al_error_set(err, ENOMEM, "hashing recipe");
            else
                nn++;
        }
        free(ents[i]);
    }
    free(ents);
    if (r < 0) {
        strv_free(names);
        return r;
    }
    qsort(names, nn, sizeof(char *), cmp_str);

    for (size_t i = 0; i < nn && r == 0; i++) {
        _cleanup_free_ char *relpath = rel[0] ? al_path_join(rel, names[i]) : strdup(names[i]);
        _cleanup_free_ char *path = relpath ? al_path_join(root, relpath) : NULL;
        if (!path) {
            r = al_error_set(err, ENOMEM, "hashing recipe");
            break;
        }
        struct stat st;
        if (lstat(path, &st) < 0) {
            r = al_error_set_errno(err, errno, "stat %s", path);
            break;
        }
        char head[64];
        char type = S_ISDIR(st.st_mode)   ? 'd'
                    : S_ISLNK(st.st_mode) ? 'l'
                    : S_ISREG(st.st_mode) ? 'f'
                                          : '?';
        if (type == '?') {
            r = al_error_set(err, EINVAL, "%s: only files, directories and symlinks allowed", path);
            break;
        }
        snprintf(head, sizeof(head), "%c %04o ", type, (unsigned)(st.st_mode & 07777));
        al_sha256_update(ctx, head, strlen(head));
        al_sha256_update(ctx, relpath, strlen(relpath) + 1);
        if (type == 'd') {
            r = hash_tree_at(root, relpath, depth + 1, ctx, err);
        } else if (type == 'l') {
            char target[PATH_MAX];
            ssize_t k = readlink(path, target, sizeof(target) - 1);
            if (k < 0) {
                r = al_error_set_errno(err, errno, "readlink %s", path);
                break;
            }
            al_sha256_update(ctx, target, (size_t)k + 1);
        } else {
            char hex[AL_SHA256_HEX_SIZE];
            r = al_sha256_file(path, hex, NULL, err);
            if (r == 0)
                al_sha256_update(ctx, hex, sizeof(hex));
        }
    }
    strv_free(names);
    return r;
}

int recipe_hash_tree(const char *dir, struct al_sha256 *ctx, struct al_error **err)
{
    return hash_tree_at(dir, "", 0, ctx, err);
}
