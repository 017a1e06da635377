/* cloud-init NoCloud rendering: exact output, YAML escaping, input
 * validation, the job blob's base64 round trip, and the rendered user-data
 * checked by the real cloud-init (schema, parser, write_files). */
#include "test_util.h"

#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runner/base/buf.h"
#include "runner/base/error.h"
#include "runner/base/util.h"
#include "provision/cloudinit.h"
#include "provision/proto/proto.h"

extern char **environ;

/* Python that has cloud-init's modules (Debian's, not a PATH shim). */
#define SYSTEM_PYTHON "/usr/bin/python3"

static char *tmpdir;

static int setup(void **state)
{
    (void)state;
    tmpdir = test_tmpdir("cloudinit");
    return tmpdir ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    test_tmpdir_remove(tmpdir);
    tmpdir = NULL;
    return 0;
}

/* Runs argv, returns its exit status (or -1) and its stdout+stderr. */
static int run_capture(char *const argv[], char **ret_out)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -1;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
    pid_t pid;
    int r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (r != 0) {
        close(fds[0]);
        return -1;
    }
    struct al_buf out = AL_BUF_INIT;
    char chunk[4096];
    ssize_t k;
    while ((k = read(fds[0], chunk, sizeof(chunk))) != 0) {
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            break;
        assert_int_equal(al_buf_append(&out, chunk, (size_t)k), 0);
    }
    close(fds[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        assert_int_equal(errno, EINTR);
    *ret_out = out.data ? al_buf_steal(&out) : strdup("");
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static char *write_tmp(const char *name, const char *content)
{
    char *path = al_path_join(tmpdir, name);
    assert_non_null(path);
    struct al_error *err = NULL;
    assert_int_equal(al_write_file_atomic(path, content, strlen(content), 0600, &err), 0);
    return path;
}

static char *helper_script(void)
{
    const char *src = getenv("AL_SOURCE_DIR");
    char *p = NULL;
    assert_true(asprintf(&p, "%s/tests/scripts/cloudinit_yaml.py", src ? src : "..") > 0);
    return p;
}

/* String values of the rendered YAML as cloud-init's parser reads them:
 * checks that keypaths[i] (e.g. "runcmd.0.0") has the value expected[i]. */
static void yaml_expect(const char *file, const char *const *keypaths, const char *const *expected,
                        size_t n)
{
    char *script = helper_script();
    char *argv[16] = {(char *)SYSTEM_PYTHON, script, (char *)"get", (char *)file};
    assert_true(n + 5 <= ARRAY_SIZE(argv));
    for (size_t i = 0; i < n; i++)
        argv[4 + i] = (char *)keypaths[i];
    argv[4 + n] = NULL;
    char *out = NULL;
    int st = run_capture(argv, &out);
    if (st != 0)
        fail_msg("cloudinit_yaml.py get failed (%d): %s", st, out);
    const char *p = out;
    for (size_t i = 0; i < n; i++) {
        if (!streq(p, expected[i]))
            fail_msg("%s: parsed as \"%s\", rendered from \"%s\"", keypaths[i], p, expected[i]);
        p += strlen(p) + 1;
    }
    free(out);
    free(script);
}

static int b64_value(char c)
{
    const char *alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = c ? strchr(alpha, c) : NULL;
    return p ? (int)(p - alpha) : -1;
}

/* Strict decoder for the test: padding only at the end, length % 4 == 0. */
static uint8_t *b64_decode(const char *s, size_t n, size_t *ret_len)
{
    assert_int_equal(n % 4, 0);
    uint8_t *out = malloc(n / 4 * 3 + 1);
    assert_non_null(out);
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        int v[4];
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            if (s[i + j] == '=') {
                assert_true(i + 4 == n && j >= 2);
                v[j] = 0;
                pad++;
            } else {
                assert_int_equal(pad, 0);
                v[j] = b64_value(s[i + j]);
                assert_true(v[j] >= 0);
            }
        }
        uint32_t w =
                (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        out[o++] = (uint8_t)(w >> 16);
        if (pad < 2)
            out[o++] = (uint8_t)(w >> 8);
        if (pad < 1)
            out[o++] = (uint8_t)w;
    }
    *ret_len = o;
    return out;
}

/* The content of the job.tlv write_files entry, decoded. */
static uint8_t *decode_job_content(const char *user_data, size_t *ret_len)
{
    const char *key = "\n    content: \"";
    const char *p = strstr(user_data, key);
    assert_non_null(p);
    p += strlen(key);
    const char *end = strchr(p, '"');
    assert_non_null(end);
    return b64_decode(p, (size_t)(end - p), ret_len);
}

static const char *const sample_keys[] = {
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBAmyX8dCvGIOsvKQ0DRPRQKKcCwdIW3SCIQCJ0x2mZu ops@al",
        NULL};

static const char expected_meta[] = "instance-id: \"0f3a9c2e41d7\"\n"
                                    "local-hostname: \"al-0f3a9c2e\"\n"
                                    "dsmode: \"local\"\n";

static const char expected_user[] =
        "#cloud-config\n"
        "# agentlab job data; generated, never holds secrets\n"
        "hostname: \"al-0f3a9c2e\"\n"
        "preserve_hostname: false\n"
        "prefer_fqdn_over_hostname: false\n"
        "manage_etc_hosts: true\n"
        "package_update: false\n"
        "package_upgrade: false\n"
        "package_reboot_if_required: false\n"
        "apt:\n"
        "  preserve_sources_list: true\n"
        "locale: \"false\"\n"
        "growpart:\n"
        "  mode: \"off\"\n"
        "resize_rootfs: false\n"
        "disable_root: true\n"
        "ssh_deletekeys: true\n"
        "ssh_publish_hostkeys:\n"
        "  enabled: false\n"
        "ssh:\n"
        "  emit_keys_to_console: false\n"
        "no_ssh_fingerprints: true\n"
        "ssh_genkeytypes: [\"ed25519\"]\n"
        "ssh_quiet_keygen: true\n"
        "ssh_pwauth: false\n"
        "ssh_authorized_keys:\n"
        "  - \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBAmyX8dCvGIOsvKQ0DRPRQKKcCwdIW3SCIQCJ0x2mZu "
        "ops@al\"\n"
        "write_files:\n"
        "  - path: \"/run/agentlab/job.tlv\"\n"
        "    owner: \"root:root\"\n"
        "    permissions: \"0600\"\n"
        "    encoding: \"b64\"\n"
        "    content: \"AAsAAAAJZWNobyBoaSAKAA0AAAACMzA=\"\n"
        "runcmd:\n"
        "  - [\"/usr/local/bin/agentlab-guest\"]\n"
        "final_message: \"agentlab: cloud-init finished after $UPTIME s\"\n";

/* A small real job in the TLV format of proto.h, spelled out byte by byte:
 * SCRIPT (tag 11) "echo hi \n", TIMEOUT_S (tag 13) "30". */
static const uint8_t sample_blob[] = {0,   11,  0,    0, 0,  9, 'e', 'c', 'h', 'o', ' ', 'h',
                                      'i', ' ', '\n', 0, 13, 0, 0,   0,   2,   '3', '0'};

static void test_golden_output(void **state)
{
    (void)state;
    struct cloudinit_job job = {
            .instance_id = "0f3a9c2e41d7",
            .hostname = "al-0f3a9c2e",
            .job_blob = sample_blob,
            .job_blob_len = sizeof(sample_blob),
            .ssh_authorized_keys = sample_keys,
    };
    char *meta = NULL, *user = NULL;
    struct al_error *err = NULL;
    assert_int_equal(cloudinit_render(&job, &meta, &user, &err), 0);
    assert_null(err);
    assert_string_equal(meta, expected_meta);
    assert_string_equal(user, expected_user);

    size_t n;
    uint8_t *blob = decode_job_content(user, &n);
    assert_int_equal(n, sizeof(sample_blob));
    assert_memory_equal(blob, sample_blob, n);
    free(blob);
    free(meta);
    free(user);
}

static void test_warm_vm_without_blob_or_keys(void **state)
{
    (void)state;
    const char *const no_keys[] = {NULL};
    struct cloudinit_job job = {
            .instance_id = "warm-1",
            .hostname = "al-warm",
            .helper_path = "/opt/agentlab/bin/agentlab-guest",
            .ssh_authorized_keys = no_keys,
    };
    char *meta = NULL, *user = NULL;
    assert_int_equal(cloudinit_render(&job, &meta, &user, NULL), 0);
    assert_null(strstr(user, "write_files"));
    assert_null(strstr(user, "ssh_authorized_keys"));
    /* no login possible: no host keys, sshd's config untouched */
    assert_non_null(strstr(user, "\nssh_keys: {}\n"));
    assert_null(strstr(user, "ssh_genkeytypes"));
    assert_null(strstr(user, "ssh_pwauth"));
    assert_non_null(strstr(user, "runcmd:\n  - [\"/opt/agentlab/bin/agentlab-guest\"]\n"));
    free(meta);
    free(user);
}

/* Every length mod 3 and every byte value survives base64. */
static void test_blob_all_bytes_round_trip(void **state)
{
    (void)state;
    uint8_t all[256 * 2 + 2];
    for (size_t i = 0; i < sizeof(all); i++)
        all[i] = (uint8_t)(i * 7 + i / 256);
    for (size_t i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    const size_t lens[] = {0, 1, 2, 3, 4, 255, 256, 257, 258, sizeof(all)};
    for (size_t k = 0; k < ARRAY_SIZE(lens); k++) {
        struct cloudinit_job job = {
                .instance_id = "b64",
                .hostname = "al-b64",
                .job_blob = all,
                .job_blob_len = lens[k],
        };
        char *meta = NULL, *user = NULL;
        assert_int_equal(cloudinit_render(&job, &meta, &user, NULL), 0);
        size_t n;
        uint8_t *dec = decode_job_content(user, &n);
        assert_int_equal(n, lens[k]);
        if (n)
            assert_memory_equal(dec, all, n);
        free(dec);
        free(meta);
        free(user);
    }
}

static void expect_rejected(const struct cloudinit_job *job, int code, const char *needle)
{
    char *meta = NULL, *user = NULL;
    struct al_error *err = NULL;
    int r = cloudinit_render(job, &meta, &user, &err);
    if (r != -code)
        fail_msg("expected %d, got %d (%s)", -code, r, al_error_message(err));
    assert_null(meta);
    assert_null(user);
    assert_non_null(err);
    if (!strstr(al_error_message(err), needle))
        fail_msg("error \"%s\" does not mention \"%s\"", al_error_message(err), needle);
    al_error_free(err);
}

static void test_bad_hostnames_rejected(void **state)
{
    (void)state;
    const char *bad[] = {"",          "-al",   "al-",       "a..b",  ".al",   "al.",
                         "al_1",      "al 1",  "al\n1",     "al\"1", "al:1",  "al/1",
                         "h\xc3\xa4", "al\\x", "al;reboot", "al'1",  "a.-b.c"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        struct cloudinit_job job = {.instance_id = "j1", .hostname = bad[i]};
        expect_rejected(&job, EINVAL, "hostname");
    }
    struct cloudinit_job null_host = {.instance_id = "j1"};
    expect_rejected(&null_host, EINVAL, "hostname");

    char too_long[65];
    memset(too_long, 'a', 64);
    too_long[64] = '\0';
    struct cloudinit_job job = {.instance_id = "j1", .hostname = too_long};
    expect_rejected(&job, EINVAL, "at most 63");

    too_long[63] = '\0';
    const char *good[] = {"a", "al-0f3a", "AL-1", "node1.ci.example", too_long};
    for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
        struct cloudinit_job ok = {.instance_id = "j1", .hostname = good[i]};
        char *meta = NULL, *user = NULL;
        assert_int_equal(cloudinit_render(&ok, &meta, &user, NULL), 0);
        free(meta);
        free(user);
    }
}

static void test_bad_instance_ids_rejected(void **state)
{
    (void)state;
    const char *bad[] = {"", "../etc", "a/b", ".", "..", ".hidden", "-x", "a b", "a\"b", "j\n"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        struct cloudinit_job job = {.instance_id = bad[i], .hostname = "al"};
        expect_rejected(&job, EINVAL, "instance id");
    }
    struct cloudinit_job none = {.hostname = "al"};
    expect_rejected(&none, EINVAL, "instance id");
}

static void test_bad_keys_paths_blobs_rejected(void **state)
{
    (void)state;
    const char *const newline_key[] = {"ssh-ed25519 AAAA a\nssh-rsa BBBB evil", NULL};
    const char *const untyped_key[] = {"AAAAC3NzaC1lZDI1NTE5 me@host", NULL};
    const char *const empty_key[] = {"ssh-ed25519 AAAA", "", NULL};
    const char *const bad_utf8_key[] = {"ssh-ed25519 AAAA j\xc3(", NULL};
    struct cloudinit_job job = {.instance_id = "j", .hostname = "al"};

    job.ssh_authorized_keys = newline_key;
    expect_rejected(&job, EINVAL, "control character");
    job.ssh_authorized_keys = untyped_key;
    expect_rejected(&job, EINVAL, "no key type");
    job.ssh_authorized_keys = empty_key;
    expect_rejected(&job, EINVAL, "#1 is empty");
    job.ssh_authorized_keys = bad_utf8_key;
    expect_rejected(&job, EILSEQ, "UTF-8");

    const char *many[66];
    for (size_t i = 0; i < 65; i++)
        many[i] = "ssh-ed25519 AAAA";
    many[65] = NULL;
    job.ssh_authorized_keys = many;
    expect_rejected(&job, E2BIG, "more than 64");
    job.ssh_authorized_keys = NULL;

    job.helper_path = "usr/local/bin/agentlab-guest";
    expect_rejected(&job, EINVAL, "absolute");
    job.helper_path = "/usr/bin/x\ny";
    expect_rejected(&job, EINVAL, "control character");
    job.helper_path = NULL;

    job.job_blob_len = 10;
    expect_rejected(&job, EINVAL, "without data");
    static uint8_t big[AL_PROTO_MAX_PAYLOAD + 1];
    job.job_blob = big;
    job.job_blob_len = sizeof(big);
    expect_rejected(&job, E2BIG, "bytes");
}

/* Quotes, backslashes, tabs and non-ASCII in the strings that reach YAML
 * come back unchanged through cloud-init's own YAML loader. */
static void test_escaping_survives_cloudinit_parser(void **state)
{
    (void)state;
    const char *key0 = "command=\"echo \\\"hi\\\"; exit\",no-pty ssh-ed25519 AAAA+/= "
                       "Jos\xc3\xa9 \xe2\x9c\x93 'q' #not-a-comment: {x}";
    const char *key1 = "ssh-rsa\tAAAAB3Nza \xc2\x85 \xe2\x80\xa8 \xef\xbb\xbf \xef\xbf\xbe end";
    const char *const keys[] = {key0, key1, NULL};
    const char *helper = "/opt/a g\"en\\t/bin/helper: #x";
    struct cloudinit_job job = {
            .instance_id = "esc-1",
            .hostname = "al-esc",
            .helper_path = helper,
            .ssh_authorized_keys = keys,
    };
    char *meta = NULL, *user = NULL;
    assert_int_equal(cloudinit_render(&job, &meta, &user, NULL), 0);
    /* the structure is intact: each value on its own line */
    assert_non_null(strstr(user, "\n  - \"command=\\\"echo \\\\\\\"hi\\\\\\\"; exit\\\",no-pty "));
    assert_non_null(strstr(user, "ssh-rsa\\x09AAAAB3Nza"));
    assert_non_null(strstr(user, "AAAAB3Nza \\x85 \\u2028 \\ufeff \\ufffe end\""));

    char *uf = write_tmp("escape.user-data", user);
    char *mf = write_tmp("escape.meta-data", meta);
    const char *ukeys[] = {"ssh_authorized_keys.0", "ssh_authorized_keys.1", "runcmd.0.0",
                           "hostname"};
    const char *uvals[] = {key0, key1, helper, "al-esc"};
    yaml_expect(uf, ukeys, uvals, ARRAY_SIZE(ukeys));
    const char *mkeys[] = {"instance-id", "local-hostname", "dsmode"};
    const char *mvals[] = {"esc-1", "al-esc", "local"};
    yaml_expect(mf, mkeys, mvals, ARRAY_SIZE(mkeys));
    free(uf);
    free(mf);
    free(meta);
    free(user);
}

static char *render_full_sample(void)
{
    uint8_t all[256];
    for (size_t i = 0; i < sizeof(all); i++)
        all[i] = (uint8_t)i;
    const char *const keys[] = {sample_keys[0], "ecdsa-sha2-nistp256 AAAAE2VjZHNh x@y", NULL};
    struct cloudinit_job job = {
            .instance_id = "0f3a9c2e41d7",
            .hostname = "al-0f3a9c2e",
            .job_blob = all,
            .job_blob_len = sizeof(all),
            .ssh_authorized_keys = keys,
    };
    char *meta = NULL, *user = NULL;
    assert_int_equal(cloudinit_render(&job, &meta, &user, NULL), 0);
    free(meta);
    return user;
}

static bool have_cloud_init(void)
{
    if (access("/usr/bin/cloud-init", X_OK) == 0 && access(SYSTEM_PYTHON, X_OK) == 0)
        return true;
    fail_msg("cloud-init is not installed (scripts/setup.sh installs it): the rendered user-data "
             "cannot be checked against its schema");
    return false;
}

static void expect_schema_valid(const char *name, const char *user)
{
    char *uf = write_tmp(name, user);
    char *argv[] = {(char *)"cloud-init", (char *)"schema", (char *)"--config-file", uf, NULL};
    char *out = NULL;
    int st = run_capture(argv, &out);
    if (st != 0 || !strstr(out, "Valid cloud-config"))
        fail_msg("cloud-init schema rejected %s (%d): %s", name, st, out);
    free(out);

    char *script = helper_script();
    char *kargv[] = {(char *)SYSTEM_PYTHON, script, (char *)"known-keys", uf, NULL};
    st = run_capture(kargv, &out);
    if (st != 0)
        fail_msg("%s has keys cloud-init does not know: %s", name, out);
    free(out);
    free(script);
    free(uf);
}

/* cloud-init 22.4 (bookworm) has `cloud-init schema --config-file`; both
 * shapes of user-data (with ssh keys and a job, and without) pass it. */
static void test_schema_valid_for_cloudinit(void **state)
{
    (void)state;
    if (!have_cloud_init())
        return;
    char *user = render_full_sample();
    expect_schema_valid("full.user-data", user);

    struct cloudinit_job warm = {.instance_id = "warm", .hostname = "al-warm"};
    char *wmeta = NULL, *wuser = NULL;
    assert_int_equal(cloudinit_render(&warm, &wmeta, &wuser, NULL), 0);
    expect_schema_valid("warm.user-data", wuser);
    free(wmeta);
    free(wuser);

    /* The validator has teeth: a wrongly typed value is an error. */
    char *broken = NULL, *out = NULL;
    assert_true(asprintf(&broken, "%s%s", user, "ssh_quiet_keygen: [1]\n") > 0);
    char *bf = write_tmp("broken.user-data", broken);
    char *bargv[] = {(char *)"cloud-init", (char *)"schema", (char *)"--config-file", bf, NULL};
    int st = run_capture(bargv, &out);
    assert_int_not_equal(st, 0);
    assert_non_null(strstr(out, "ssh_quiet_keygen"));
    free(out);

    free(bf);
    free(broken);
    free(user);
}

/* cloud-init's write_files turns the rendered entry into exactly the blob,
 * mode 0600, owned by root. */
static void test_cloudinit_write_files_round_trip(void **state)
{
    (void)state;
    if (!have_cloud_init())
        return;
    char *user = render_full_sample();
    char *uf = write_tmp("wf.user-data", user);
    char *root = al_path_join(tmpdir, "root");
    char *script = helper_script();
    char *argv[] = {(char *)SYSTEM_PYTHON, script, (char *)"write-files", uf, root, NULL};
    char *out = NULL;
    int st = run_capture(argv, &out);
    if (st != 0)
        fail_msg("cloud-init write_files failed (%d): %s", st, out);
    free(out);

    char path[4096];
    assert_true(snprintf(path, sizeof(path), "%s%s", root, AL_PROTO_JOB_FILE) < (int)sizeof(path));
    char *data = NULL;
    size_t len = 0;
    assert_int_equal(al_read_file(path, 4096, &data, &len, NULL), 0);
    assert_int_equal(len, 256);
    for (size_t i = 0; i < 256; i++)
        assert_int_equal((uint8_t)data[i], i);
    struct stat st_;
    assert_int_equal(stat(path, &st_), 0);
    assert_int_equal(st_.st_mode & 07777, 0600);
    if (geteuid() == 0)
        assert_int_equal(st_.st_uid, 0);
    free(data);
    free(script);
    free(root);
    free(uf);
    free(user);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_golden_output),
            cmocka_unit_test(test_warm_vm_without_blob_or_keys),
            cmocka_unit_test(test_blob_all_bytes_round_trip),
            cmocka_unit_test(test_bad_hostnames_rejected),
            cmocka_unit_test(test_bad_instance_ids_rejected),
            cmocka_unit_test(test_bad_keys_paths_blobs_rejected),
            cmocka_unit_test(test_escaping_survives_cloudinit_parser),
            cmocka_unit_test(test_schema_valid_for_cloudinit),
            cmocka_unit_test(test_cloudinit_write_files_round_trip),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
