#include "images/sweep.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <unistd.h>

#include "images/catalog.h"
#include "runner/base/log.h"
#include "runner/base/macro.h"
#include "runner/base/util.h"

int image_build_lock(const char *images_root, const char *name, struct al_error **err)
{
    _cleanup_free_ char *path = NULL, *busy = NULL;
    if (asprintf(&path, "%s/.%s.build.lock", images_root, name) < 0 ||
        asprintf(&busy, "another build of image \"%s\" is running", name) < 0)
        return al_error_set(err, ENOMEM, "locking the build");
    /* inherited: the build's children (mmdebstrap and what it runs) hold
     * the lock too, so that a build dir stays live while any process of a
     * killed build still works in it */
    return image_lock_path(path, true, true, 0, busy, err);
}

/* Unmounts whatever an interrupted bootstrap left mounted below dir. */
void image_umount_below(const char *dir)
{
    _cleanup_fclose_ FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return;
    _cleanup_strv_ char **mounts = calloc(1, sizeof(char *));
    size_t n = 0, dl = strlen(dir);
    char *line = NULL;
    size_t cap = 0;
    while (mounts && getline(&line, &cap, f) > 0) {
        /* id parent major:minor root mountpoint ... */
        char *save = NULL, *field = strtok_r(line, " ", &save);
        for (int i = 0; field && i < 4; i++)
            field = strtok_r(NULL, " ", &save);
        if (!field)
            continue;
        /* unescape \040 and friends */
        char *w = field;
        for (char *r = field; *r; r++) {
            if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' &&
                r[3] >= '0' && r[3] <= '7') {
                *w++ = (char)((r[1] - '0') * 64 + (r[2] - '0') * 8 + (r[3] - '0'));
                r += 3;
            } else {
                *w++ = *r;
            }
        }
        *w = '\0';
        if (strncmp(field, dir, dl) != 0 || field[dl] != '/')
            continue;
        char **nv = realloc(mounts, (n + 2) * sizeof(char *));
        if (!nv)
            break;
        mounts = nv;
        mounts[n] = strdup(field);
        if (mounts[n])
            mounts[++n] = NULL;
    }
    free(line);
    /* deepest first: later entries in mountinfo are mounted on top */
    for (size_t i = n; i-- > 0;)
        (void)umount2(mounts[i], MNT_DETACH);
}

/* The image name in ".build-NAME-XXXXXX" (mkdtemp's six characters), or
 * NULL when entry is not such a directory name. */
static char *build_dir_image(const char *entry)
{
    size_t pl = strlen(IMAGE_BUILD_DIR_PREFIX), l = strlen(entry);
    if (strncmp(entry, IMAGE_BUILD_DIR_PREFIX, pl) != 0 || l < pl + 8 || entry[l - 7] != '-')
        return NULL;
    char *name = strndup(entry + pl, l - pl - 7);
    if (name && !image_name_is_valid(name)) {
        free(name);
        return NULL;
    }
    return name;
}

static int sweep_one(const char *state_dir, const char *root, const char *entry, const char *name,
                     bool build_locked, struct al_error **err)
{
    _cleanup_close_ int build_lock = -1;
    if (!build_locked) {
        build_lock = image_build_lock(root, name, NULL);
        if (build_lock < 0)
            return 0; /* a build of this image runs: its directory is live */
    }
    _cleanup_close_ int image_lock_fd = image_lock(state_dir, name, true, 0, NULL);
    if (image_lock_fd < 0)
        return 0; /* an import or a swap runs */
    _cleanup_free_ char *dir = al_path_join(root, entry);
    if (!dir)
        return al_error_set(err, ENOMEM, "sweeping image builds");
    image_umount_below(dir);
    int r = al_rm_rf(dir, err);
    if (r < 0)
        return al_error_wrap(err, "removing the leftover of an interrupted build");
    log_info(NULL, "images: removed %s, left by an interrupted build or import of \"%s\"", dir,
             name);
    return 1;
}

int image_sweep_builds(const char *state_dir, const char *name, bool build_locked,
                       unsigned *ret_removed, struct al_error **err)
{
    unsigned removed = 0;
    int first = 0;
    if (ret_removed)
        *ret_removed = 0;
    _cleanup_free_ char *root = image_root_path(state_dir);
    if (!root)
        return al_error_set(err, ENOMEM, "sweeping image builds");
    DIR *d = opendir(root);
    if (!d)
        return errno == ENOENT ? 0 : al_error_set_errno(err, errno, "opening %s", root);
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_type != DT_DIR && de->d_type != DT_UNKNOWN)
            continue;
        _cleanup_free_ char *owner = build_dir_image(de->d_name);
        if (!owner || (name && strcmp(owner, name) != 0))
            continue;
        _cleanup_error_ struct al_error *e = NULL;
        int r = sweep_one(state_dir, root, de->d_name, owner, build_locked && name, &e);
        if (r > 0) {
            removed++;
        } else if (r < 0) {
            log_warn(NULL, "images: %s", al_error_message(e));
            if (!first) {
                first = r;
                if (err)
                    *err = TAKE_PTR(e);
            }
        }
    }
    closedir(d);
    if (ret_removed)
        *ret_removed = removed;
    return first;
}
