/* The GitLab source's cache store: key names, save and restore, fallback
 * keys, eviction of the least recently used archives at the size cap,
 * atomic replacement and the clean-up of what a crash leaves. */
#include "test_util.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "runner/base/util.h"
#include "runner/sources/gitlab_cache.h"

struct fx {
    char *root;
    char *store_dir;
    char *work; /* what a guest handed back */
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    f->root = test_tmpdir("gitlab-cache");
    f->store_dir = al_path_join(f->root, "store");
    f->work = al_path_join(f->root, "work");
    assert_int_equal(mkdir(f->work, 0700), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    free(f->store_dir);
    free(f->work);
    test_tmpdir_remove(f->root);
    free(f);
    return 0;
}

static void write_file(const char *dir, const char *rel, size_t size, char fill)
{
    _cleanup_free_ char *path = al_path_join(dir, rel);
    _cleanup_free_ char *parent = strdup(path);
    *strrchr(parent, '/') = '\0';
    assert_int_equal(al_mkdir_p(parent, 0700, NULL), 0);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    for (size_t i = 0; i < size; i++)
        fputc(fill, fp);
    fclose(fp);
}

/* The names and sizes of the files in a zip, "a=1,b/c=2". */
static char *zip_listing(const char *zip)
{
    struct archive *a = archive_read_new();
    archive_read_support_format_zip(a);
    assert_int_equal(archive_read_open_filename(a, zip, 16384), ARCHIVE_OK);
    char *out = strdup("");
    struct archive_entry *e;
    while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
        char *n = NULL;
        assert_true(asprintf(&n, "%s%s%s=%lld", out, *out ? "," : "", archive_entry_pathname(e),
                             (long long)archive_entry_size(e)) > 0);
        free(out);
        out = n;
    }
    archive_read_free(a);
    return out;
}

static struct gitlab_cache_spec spec_of(char **paths)
{
    size_t n = 0;
    while (paths[n])
        n++;
    return (struct gitlab_cache_spec){.key = NULL, .paths = paths, .n_paths = n};
}

static void test_key_names(void **state)
{
    (void)state;
    static const struct {
        const char *key, *name;
    } cases[] = {
            {"main-non_protected", "main-non_protected"},
            {"feature/x-protected", "feature%2Fx-protected"},
            {"a/../../../etc/passwd", "etc%2Fpasswd"},
            {"..%2f..%2fescape", "escape"},
            {"win\\dows", "win%2Fdows"},
            {"./x/./y/", "x%2Fy"},
            {"trailing  / ", "trailing"},
            {".hidden", "%2Ehidden"},
            {"a.b", "a.b"},
            {"sp ace%", "sp%20ace%25"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        _cleanup_free_ char *name = NULL;
        if (gitlab_cache_key_name(cases[i].key, &name, NULL) < 0)
            fail_msg("key %s refused", cases[i].key);
        if (!streq(name, cases[i].name))
            fail_msg("key %s: want %s, got %s", cases[i].key, cases[i].name, name);
    }
    const char *bad[] = {"", "/", "..", "../..", " ", "%2e%2e"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *name = NULL;
        struct al_error *err = NULL;
        assert_int_equal(gitlab_cache_key_name(bad[i], &name, &err), -EINVAL);
        assert_null(name);
        al_error_free(err);
    }
    /* long keys stay within the cap and stay apart */
    char long1[300], long2[300];
    for (size_t i = 0; i < sizeof(long1) - 1; i++)
        long1[i] = i % 2 ? '#' : 'x';
    long1[sizeof(long1) - 1] = '\0';
    memcpy(long2, long1, sizeof(long1));
    long2[sizeof(long2) - 2] = 'y';
    _cleanup_free_ char *n1 = NULL, *n2 = NULL;
    assert_int_equal(gitlab_cache_key_name(long1, &n1, NULL), 0);
    assert_int_equal(gitlab_cache_key_name(long2, &n2, NULL), 0);
    assert_true(strlen(n1) <= GITLAB_CACHE_NAME_MAX);
    assert_non_null(strchr(n1, '~'));
    assert_false(streq(n1, n2));
    assert_null(strchr(n1, '/'));
}

static void test_save_restore_fallback(void **state)
{
    struct fx *f = *state;
    struct gitlab_cache_store *s = NULL;
    assert_int_equal(gitlab_cache_store_new(f->store_dir, 1 << 20, &s, NULL), 0);
    write_file(f->work, "vendor/lib/a.txt", 10, 'a');
    write_file(f->work, "vendor/b.txt", 3, 'b');
    write_file(f->work, "other/c.txt", 5, 'c');
    char *paths[] = {"vendor/", NULL};
    struct gitlab_cache_spec c = spec_of(paths);
    uint64_t bytes = 0;
    assert_int_equal(gitlab_cache_store_put(s, 42, "deps-non_protected", f->work, &c, &bytes, NULL),
                     0);
    assert_true(bytes > 13);
    /* stored under the project, by key name */
    _cleanup_free_ char *stored = NULL;
    assert_true(asprintf(&stored, "%s/42/deps-non_protected.zip", f->store_dir) > 0);
    struct stat st;
    assert_int_equal(stat(stored, &st), 0);
    assert_int_equal((uint64_t)st.st_size, bytes);

    /* a miss: other key, or the same key of another project */
    _cleanup_free_ char *dest = al_path_join(f->root, "restored.zip");
    const char *miss[] = {"deps-protected"};
    size_t idx = 99;
    assert_int_equal(gitlab_cache_store_get(s, 42, miss, 1, dest, &idx, NULL), -ENOENT);
    const char *key[] = {"deps-non_protected"};
    assert_int_equal(gitlab_cache_store_get(s, 7, key, 1, dest, &idx, NULL), -ENOENT);
    assert_int_equal(access(dest, F_OK), -1);

    /* the fallback key is found when the key is not */
    const char *keys[] = {"feature-non_protected", "deps-non_protected"};
    assert_int_equal(gitlab_cache_store_get(s, 42, keys, 2, dest, &idx, NULL), 0);
    assert_int_equal(idx, 1);
    _cleanup_free_ char *listing = zip_listing(dest);
    assert_string_equal(listing, "vendor/b.txt=3,vendor/lib/a.txt=10");

    /* a new save replaces the archive; a restored copy is not disturbed */
    write_file(f->work, "vendor/b.txt", 4, 'B');
    assert_int_equal(gitlab_cache_store_put(s, 42, "deps-non_protected", f->work, &c, &bytes, NULL),
                     0);
    _cleanup_free_ char *listing2 = zip_listing(dest);
    assert_string_equal(listing2, "vendor/b.txt=3,vendor/lib/a.txt=10");
    _cleanup_free_ char *dest2 = al_path_join(f->root, "restored2.zip");
    assert_int_equal(gitlab_cache_store_get(s, 42, key, 1, dest2, &idx, NULL), 0);
    assert_int_equal(idx, 0);
    _cleanup_free_ char *listing3 = zip_listing(dest2);
    assert_string_equal(listing3, "vendor/b.txt=4,vendor/lib/a.txt=10");

    /* nothing matched: nothing stored */
    char *none[] = {"missing/", NULL};
    struct gitlab_cache_spec c2 = spec_of(none);
    assert_int_equal(gitlab_cache_store_put(s, 42, "empty", f->work, &c2, &bytes, NULL), 0);
    assert_int_equal(bytes, 0);
    _cleanup_free_ char *empty = NULL;
    assert_true(asprintf(&empty, "%s/42/empty.zip", f->store_dir) > 0);
    assert_int_equal(access(empty, F_OK), -1);

    /* untracked: the guest's copies of the untracked files, under their
     * own paths, with the paths' files, each once */
    write_file(f->work, GITLAB_UNTRACKED_DIR "/build/obj.o", 6, 'o');
    write_file(f->work, GITLAB_UNTRACKED_DIR "/vendor/b.txt", 4, 'B');
    struct gitlab_cache_spec cu = spec_of(paths);
    cu.untracked = true;
    assert_int_equal(gitlab_cache_store_put(s, 42, "untracked", f->work, &cu, &bytes, NULL), 0);
    const char *ukey[] = {"untracked"};
    _cleanup_free_ char *dest3 = al_path_join(f->root, "restored3.zip");
    assert_int_equal(gitlab_cache_store_get(s, 42, ukey, 1, dest3, &idx, NULL), 0);
    _cleanup_free_ char *listing4 = zip_listing(dest3);
    /* in walk order */
    assert_int_equal(strlen(listing4), strlen("build/obj.o=6,vendor/b.txt=4,vendor/lib/a.txt=10"));
    assert_non_null(strstr(listing4, "build/obj.o=6"));
    assert_non_null(strstr(listing4, "vendor/b.txt=4"));
    assert_non_null(strstr(listing4, "vendor/lib/a.txt=10"));
    /* without untracked the copies are not the cache's */
    assert_int_equal(gitlab_cache_store_put(s, 42, "tracked", f->work, &c, &bytes, NULL), 0);
    const char *tkey[] = {"tracked"};
    _cleanup_free_ char *dest4 = al_path_join(f->root, "restored4.zip");
    assert_int_equal(gitlab_cache_store_get(s, 42, tkey, 1, dest4, &idx, NULL), 0);
    _cleanup_free_ char *listing5 = zip_listing(dest4);
    assert_string_equal(listing5, "vendor/b.txt=4,vendor/lib/a.txt=10");

    struct gitlab_cache_stats stats;
    gitlab_cache_store_stats(s, &stats);
    assert_int_equal(stats.hits, 4);
    assert_int_equal(stats.misses, 2);
    assert_int_equal(stats.saves, 4);
    assert_int_equal(stats.archives, 3);
    assert_int_equal(stats.evictions, 0);
    gitlab_cache_store_free(s);
}

static void set_used(const char *store, const char *rel, time_t when)
{
    _cleanup_free_ char *path = al_path_join(store, rel);
    struct timespec ts[2] = {{.tv_sec = when}, {.tv_sec = when}};
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static bool present(const char *store, const char *rel)
{
    _cleanup_free_ char *path = al_path_join(store, rel);
    return access(path, F_OK) == 0;
}

/* Eviction at the cap: least recently used first, a restore counts as a
 * use, the archive just written survives, one over the cap is refused. */
static void test_eviction_at_cap(void **state)
{
    struct fx *f = *state;
    char *paths[] = {"data/", NULL};
    struct gitlab_cache_spec c = spec_of(paths);
    struct gitlab_cache_store *probe = NULL;
    assert_int_equal(gitlab_cache_store_new(f->store_dir, UINT64_MAX, &probe, NULL), 0);
    srand(1);
    _cleanup_free_ char *data = al_path_join(f->work, "data");
    assert_int_equal(mkdir(data, 0700), 0);
    _cleanup_free_ char *file = al_path_join(data, "blob");
    FILE *fp = fopen(file, "w");
    for (int i = 0; i < 20000; i++)
        fputc(rand() & 0xff, fp); /* does not compress */
    fclose(fp);
    uint64_t one = 0;
    assert_int_equal(gitlab_cache_store_put(probe, 1, "a", f->work, &c, &one, NULL), 0);
    assert_true(one > 20000);
    gitlab_cache_store_free(probe);
    assert_int_equal(al_rm_rf(f->store_dir, NULL), 0);

    /* room for three archives, not four */
    struct gitlab_cache_store *s = NULL;
    assert_int_equal(gitlab_cache_store_new(f->store_dir, 3 * one + one / 2, &s, NULL), 0);
    time_t t0 = time(NULL) - 1000;
    uint64_t bytes;
    assert_int_equal(gitlab_cache_store_put(s, 1, "a", f->work, &c, &bytes, NULL), 0);
    set_used(f->store_dir, "1/a.zip", t0);
    assert_int_equal(gitlab_cache_store_put(s, 1, "b", f->work, &c, &bytes, NULL), 0);
    set_used(f->store_dir, "1/b.zip", t0 + 10);
    assert_int_equal(gitlab_cache_store_put(s, 2, "c", f->work, &c, &bytes, NULL), 0);
    set_used(f->store_dir, "2/c.zip", t0 + 20);
    struct gitlab_cache_stats st;
    gitlab_cache_store_stats(s, &st);
    assert_int_equal(st.archives, 3);
    assert_int_equal(st.bytes, 3 * one);
    assert_int_equal(st.evictions, 0);

    /* "a" is restored: now "b" is the least recently used */
    _cleanup_free_ char *dest = al_path_join(f->root, "a.zip");
    const char *ka[] = {"a"};
    size_t idx;
    assert_int_equal(gitlab_cache_store_get(s, 1, ka, 1, dest, &idx, NULL), 0);

    /* a fourth archive (another project) pushes "b" out */
    assert_int_equal(gitlab_cache_store_put(s, 3, "d", f->work, &c, &bytes, NULL), 0);
    assert_true(present(f->store_dir, "1/a.zip"));
    assert_false(present(f->store_dir, "1/b.zip"));
    assert_true(present(f->store_dir, "2/c.zip"));
    assert_true(present(f->store_dir, "3/d.zip"));
    gitlab_cache_store_stats(s, &st);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.archives, 3);
    assert_true(st.bytes <= 3 * one + one / 2);

    /* the restored copy outlives the eviction of its archive */
    set_used(f->store_dir, "1/a.zip", t0 - 100);
    assert_int_equal(gitlab_cache_store_put(s, 1, "e", f->work, &c, &bytes, NULL), 0);
    assert_false(present(f->store_dir, "1/a.zip"));
    _cleanup_free_ char *listing = zip_listing(dest);
    assert_string_equal(listing, "data/blob=20000");

    /* a crash's half-written archive goes after an hour, a fresh one stays */
    write_file(f->store_dir, "1/.tmp-dead.zip", 100, 'x');
    set_used(f->store_dir, "1/.tmp-dead.zip", time(NULL) - 7200);
    write_file(f->store_dir, "1/.tmp-busy.zip", 100, 'x');
    uint64_t evicted = 99;
    assert_int_equal(gitlab_cache_store_evict(s, &evicted, NULL), 0);
    assert_int_equal(evicted, 0);
    assert_false(present(f->store_dir, "1/.tmp-dead.zip"));
    assert_true(present(f->store_dir, "1/.tmp-busy.zip"));
    gitlab_cache_store_free(s);

    /* an archive larger than the whole cap is refused and leaves nothing */
    assert_int_equal(gitlab_cache_store_new(f->store_dir, one / 2, &s, NULL), 0);
    struct al_error *err = NULL;
    assert_int_equal(gitlab_cache_store_put(s, 9, "big", f->work, &c, &bytes, &err), -EFBIG);
    al_error_free(err);
    _cleanup_free_ char *pdir = al_path_join(f->store_dir, "9");
    DIR *d = opendir(pdir);
    assert_non_null(d);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)))
        n += !streq(e->d_name, ".") && !streq(e->d_name, "..");
    closedir(d);
    assert_int_equal(n, 0);
    gitlab_cache_store_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_key_names),
            cmocka_unit_test_setup_teardown(test_save_restore_fallback, setup, teardown),
            cmocka_unit_test_setup_teardown(test_eviction_at_cap, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
