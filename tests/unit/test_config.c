#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/util.h"
#include "runner/engine/config.h"

static int setup(void **state)
{
    (void)state;
    unsetenv("AGENTLAB_STATE_DIR");
    unsetenv("AGENTLAB_RUN_DIR");
    unsetenv("AGENTLAB_CONFIG");
    return 0;
}

static struct config *load_ok(const char *text)
{
    struct config *c = NULL;
    struct al_error *err = NULL;
    int r = config_load_string(text, strlen(text), "test.conf", &c, &err);
    if (r < 0)
        fail_msg("unexpected error: %s", al_error_message(err));
    return c;
}

static char *load_err(const char *text)
{
    struct config *c = NULL;
    struct al_error *err = NULL;
    int r = config_load_string(text, strlen(text), "test.conf", &c, &err);
    assert_true(r < 0);
    assert_null(c);
    char *msg = strdup(al_error_message(err));
    al_error_free(err);
    return msg;
}

/* The accelerator keys of a libvirt backend. */
static void test_accel_keys(void **state)
{
    (void)state;
    struct config *c = load_ok("[backend \"local\"]\naccel = tcg\nboot_watchdog = 0\n"
                               "boot_watchdog_tcg = 90s\nemulator = /usr/local/bin/qemu-kvm\n");
    assert_int_equal(c->backends[0].libvirt.accel, ACCEL_TCG);
    assert_int_equal(c->backends[0].libvirt.boot_watchdog_s, 0);
    assert_int_equal(c->backends[0].libvirt.boot_watchdog_tcg_s, 90);
    assert_string_equal(c->backends[0].libvirt.emulator, "/usr/local/bin/qemu-kvm");
    config_free(c);
    char *msg = load_err("[backend \"local\"]\nemulator = qemu\n");
    assert_non_null(strstr(msg, "test.conf:2: bad value \"qemu\" for key \"emulator\""));
    free(msg);
    msg = load_err("[backend \"c\"]\ntype = proxmox\nboot_watchdog = 1m\n");
    assert_non_null(strstr(msg, "does not apply to backend type proxmox"));
    free(msg);
}

/* transport: auto by default, local or remote by hand; remote refuses
 * libguestfs injection, which needs the overlay as a file of this host. */
static void test_transport_key(void **state)
{
    (void)state;
    struct config *c = load_ok("[backend \"local\"]\n[backend \"h2\"]\n"
                               "uri = qemu+ssh://agentlab@h2/system\ntransport = remote\n"
                               "[backend \"h3\"]\ntransport = local\ninject = guestfs\n");
    assert_int_equal(c->backends[0].libvirt.transport, LV_TRANSPORT_AUTO);
    assert_int_equal(c->backends[1].libvirt.transport, LV_TRANSPORT_REMOTE);
    assert_int_equal(c->backends[2].libvirt.transport, LV_TRANSPORT_LOCAL);
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    assert_int_equal(config_print(c, f), 0);
    fclose(f);
    assert_non_null(strstr(out, "[backend \"h2\"]\n"));
    assert_non_null(strstr(out, "transport = remote\n"));
    assert_non_null(strstr(out, "transport = auto\n"));
    free(out);
    config_free(c);

    char *msg = load_err("[backend \"h2\"]\ntransport = remote\ninject = guestfs\n");
    assert_non_null(strstr(msg, "backend \"h2\": inject = guestfs needs the overlay on this host"));
    free(msg);
    msg = load_err("[backend \"h2\"]\nuri = qemu+tls://h2/system\ninject = guestfs\n");
    assert_non_null(strstr(msg, "qemu+tls://h2/system is remote (transport = auto)"));
    free(msg);
    msg = load_err("[backend \"h2\"]\ntransport = nfs\n");
    assert_non_null(strstr(msg, "test.conf:2: bad value \"nfs\" for key \"transport\""));
    free(msg);
    msg = load_err("[backend \"c\"]\ntype = proxmox\ntransport = remote\n");
    assert_non_null(strstr(msg, "does not apply to backend type proxmox"));
    free(msg);
    /* the proxmox checks moved with it still hold */
    msg = load_err("[backend \"c\"]\ntype = proxmox\nurl = https://pve:8006\n");
    assert_non_null(strstr(msg, "of type proxmox needs url, template and token_file"));
    free(msg);
}

static void test_defaults_without_file(void **state)
{
    (void)state;
    struct config *c = load_ok("");
    assert_string_equal(c->agent.state_dir, "/var/lib/agentlab");
    assert_string_equal(c->agent.run_dir, "/run/agentlab");
    assert_string_equal(c->agent.api_socket, "/run/agentlab/agentlabd.sock");
    assert_int_equal(c->agent.job_timeout_s, 3600);
    assert_int_equal(c->n_backends, 1);
    assert_string_equal(c->backends[0].name, "local");
    assert_int_equal(c->backends[0].type, BACKEND_LIBVIRT);
    assert_string_equal(c->backends[0].libvirt.uri, "qemu:///system");
    assert_string_equal(c->backends[0].libvirt.storage_pool, ""); /* derived by the backend */
    assert_int_equal(c->backends[0].libvirt.inject, INJECT_SEED);
    assert_int_equal(c->backends[0].libvirt.accel, ACCEL_AUTO);
    assert_int_equal(c->backends[0].libvirt.boot_watchdog_s, 30);
    assert_int_equal(c->backends[0].libvirt.boot_watchdog_tcg_s, 180);
    assert_string_equal(c->backends[0].libvirt.emulator, "");
    assert_int_equal(c->n_pools, 1);
    assert_string_equal(c->pools[0].name, "default");
    assert_null(c->pools[0].backends[0]);
    config_free(c);

    /* a named file that does not exist is an error; the default one is not */
    struct al_error *err = NULL;
    assert_int_equal(config_load("/nonexistent/agentlab.conf", &c, &err), -ENOENT);
    assert_non_null(strstr(al_error_message(err), "/nonexistent/agentlab.conf"));
    al_error_free(err);
}

static void test_full_file(void **state)
{
    (void)state;
    struct config *c = load_ok("# comment\n"
                               "[agent]\n"
                               "state_dir = /srv/agentlab\n"
                               "log_level = debug\n"
                               "job_timeout = 15m\n"
                               "pool = ci\n"
                               "\n"
                               "[backend \"local\"]\n"
                               "uri = qemu:///system\n"
                               "inject = guestfs\n"
                               "max_vms = 4\n"
                               "memory = 16G\n"
                               "\n"
                               "[backend \"spare\"]\n"
                               "uri = test:///default\n"
                               "\n"
                               "[pool \"ci\"]\n"
                               "backends = local, spare\n"
                               "labels = linux,x64\n"
                               "warm = 2\n"
                               "\n"
                               "[source \"drop\"]\n"
                               "type = spool\n"
                               "pool = ci\n");
    assert_string_equal(c->agent.state_dir, "/srv/agentlab");
    assert_int_equal(c->agent.log_level, AL_LOG_DEBUG);
    assert_int_equal(c->agent.job_timeout_s, 900);
    assert_int_equal(c->n_backends, 2);
    assert_int_equal(c->backends[0].libvirt.inject, INJECT_GUESTFS);
    assert_int_equal(c->backends[0].max_vms, 4);
    assert_int_equal(c->backends[0].memory, 16ull << 30);
    const struct config_pool *p = config_find_pool(c, "ci");
    assert_non_null(p);
    assert_string_equal(p->backends[0], "local");
    assert_string_equal(p->backends[1], "spare");
    assert_null(p->backends[2]);
    assert_string_equal(p->labels[1], "x64");
    assert_int_equal(p->warm, 2);
    assert_int_equal(c->n_sources, 1);
    assert_string_equal(c->sources[0].dir, "/srv/agentlab/spool");
    config_free(c);
}

static void test_env_override(void **state)
{
    (void)state;
    setenv("AGENTLAB_STATE_DIR", "/tmp/al-state", 1);
    setenv("AGENTLAB_RUN_DIR", "/tmp/al-run", 1);
    struct config *c = load_ok("[agent]\nstate_dir = /srv/x\n");
    assert_string_equal(c->agent.state_dir, "/tmp/al-state");
    assert_string_equal(c->agent.api_socket, "/tmp/al-run/agentlabd.sock");
    config_free(c);
    setenv("AGENTLAB_STATE_DIR", "relative/dir", 1);
    char *msg = load_err("");
    assert_non_null(strstr(msg, "AGENTLAB_STATE_DIR must be an absolute path"));
    free(msg);
    unsetenv("AGENTLAB_STATE_DIR");
    unsetenv("AGENTLAB_RUN_DIR");
}

static void test_errors_name_file_line_key(void **state)
{
    (void)state;
    struct {
        const char *text;
        const char *expect;
    } cases[] = {
            {"[agent]\nlog_level = loud\n",
             "test.conf:2: bad value \"loud\" for key \"log_level\": expected one of error, warn, "
             "info, debug"},
            {"[agent]\n\nbogus = 1\n", "test.conf:3: unknown key \"bogus\" in [agent]"},
            {"[backend \"x\"]\ntype = proxmox\ninject = seed\n",
             "test.conf:3: key \"inject\" does not apply to backend type proxmox"},
            {"[backend \"x\"]\nmax_vms = -1\n",
             "test.conf:2: bad value \"-1\" for key \"max_vms\""},
            {"[agent]\njob_timeout = 10 minutes\n", "test.conf:2: bad value \"10 minutes\""},
            {"[pool \"p\"]\nbackends = local, nowhere\n[backend \"local\"]\n",
             "pool \"p\" names unknown backend \"nowhere\""},
            {"[backend]\nuri = x\n", "needs a quoted name"},
            {"[backend \"bad name!\"]\n", "invalid backend name"},
            {"[frobnicate]\nx = 1\n", "unknown section [frobnicate]"},
            {"key = value\n", "outside of any section"},
            {"[agent\n", "test.conf:1: syntax error"},
            {"[backend \"pve\"]\ntype = proxmox\n", "needs url, template and token_file"},
            {"[agent]\nstate_dir = relative\n", "bad value \"relative\" for key \"state_dir\""},
            {"[agent]\npool = nope\n[pool \"ci\"]\n", "the default pool \"nope\" is not defined"},
            {"[source \"q\"]\ntype = http\n", "source \"q\" of type http needs a url"},
            /* found by fuzz_config: the implicit default pool took this name
             * and the printed config did not load again */
            {"[agent]\npool = a = [b\n", "bad value \"a = [b\" for key \"pool\""},
            {"[agent]\nimage = ../x\n", "bad value \"../x\" for key \"image\""},
            /* memory snapshots are the libvirt backend's */
            {"[backend \"pve\"]\ntype = proxmox\nurl = https://127.0.0.1:8006\ntemplate = 9000\n"
             "token_file = /etc/t\n[pool \"default\"]\nbackends = pve\nstart = snapshot\n",
             "pool \"default\": start = snapshot needs a libvirt backend"},
            {"[pool \"default\"]\nstart = sometimes\n",
             "bad value \"sometimes\" for key \"start\": expected boot, snapshot or auto"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        char *msg = load_err(cases[i].text);
        if (!strstr(msg, cases[i].expect))
            fail_msg("case %zu: got \"%s\", want \"%s\"", i, msg, cases[i].expect);
        free(msg);
    }
}

static void test_long_line_and_nul(void **state)
{
    (void)state;
    /* longer than libinih's 198 characters is fine, up to a limit */
    size_t big = AL_CONFIG_MAX_LINE + 10;
    char *text = malloc(big + 1);
    memset(text, 'x', big);
    memcpy(text, "[agent]\nimage = ", 16);
    text[big - 1] = '\n';
    text[big] = '\0';
    char *msg = load_err(text);
    assert_non_null(strstr(msg, "test.conf:2: line longer than 65536 characters"));
    free(msg);
    text[16 + AL_CONFIG_MAX_VALUE + 1] = '\n';
    text[16 + AL_CONFIG_MAX_VALUE + 2] = '\0';
    msg = load_err(text);
    assert_string_equal(msg, "test.conf:2: the value of \"image\" is longer than 16384 bytes");
    free(msg);
    free(text);
    /* indented, it would be a continuation line to libinih */
    char indented[400];
    snprintf(indented, sizeof(indented), "[agent]\n  image = %0300d\n", 0);
    msg = load_err(indented);
    assert_non_null(strstr(msg, "test.conf:2: line longer than 198 characters"));
    free(msg);

    struct config *c = NULL;
    struct al_error *err = NULL;
    const char nul[] = "[agent]\nimage = a\0b\n";
    assert_true(config_load_string(nul, sizeof(nul) - 1, "nul.conf", &c, &err) < 0);
    assert_non_null(strstr(al_error_message(err), "NUL byte"));
    al_error_free(err);
}

/* libinih reads an indented line after a key as more of that key's value,
 * its inline comment kept, which config show could not write back (found
 * by fuzz_config): it is refused; an indented key under a header is not. */
static void test_indented_lines(void **state)
{
    (void)state;
    char *msg = load_err("[backend \"a\"]\nnetwork = x ; c1\n\tmore ; c2\n");
    assert_string_equal(msg, "test.conf:3: indented line continues the value above: write "
                             "each key = value on one line");
    free(msg);
    msg = load_err("[agent]\nimage = x\n\n# c\n  [backend \"a\"]\n");
    assert_non_null(strstr(msg, "test.conf:5: indented line continues"));
    free(msg);
    /* "key =;x" is the value ";x", which "key = ;x" is not */
    msg = load_err("[backend \"a\"]\nnetwork =; 2\n");
    assert_string_equal(msg, "test.conf:2: the value of \"network\" begins with ';'");
    free(msg);
    struct config *c = load_ok("[backend \"a\"]\n  type = libvirt\n\n  # c\n[agent]\n"
                               "\timage = y ; z\n");
    assert_string_equal(c->agent.image, "y");
    config_free(c);
}

static void test_print_roundtrip(void **state)
{
    (void)state;
    struct config *c = load_ok("[agent]\nretention = 3d\nmax_log_size = 10M\n"
                               "[backend \"local\"]\ninject = guestfs\n[pool \"default\"]\n"
                               "labels = a, b\n");
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    assert_int_equal(config_print(c, f), 0);
    fclose(f);
    assert_non_null(strstr(out, "retention = 3d\n"));
    assert_non_null(strstr(out, "max_log_size = 10M\n"));
    assert_non_null(strstr(out, "inject = guestfs\n"));
    assert_non_null(strstr(out, "labels = a, b\n"));
    /* the printed form parses back to the same thing */
    struct config *again = load_ok(out);
    char *out2 = NULL;
    size_t len2 = 0;
    f = open_memstream(&out2, &len2);
    config_print(again, f);
    fclose(f);
    assert_string_equal(strchr(out, '\n'), strchr(out2, '\n'));
    free(out);
    free(out2);
    config_free(again);
    config_free(c);
}

static char *print(const struct config *c)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    assert_int_equal(config_print(c, f), 0);
    fclose(f);
    return out;
}

/* Values longer than a line libinih reads (198 characters), as a file may
 * have them and as `config show` prints them (with ", " between list items
 * and paths derived from long directories), parse back to the same
 * configuration. */
static void test_print_roundtrip_long_values(void **state)
{
    (void)state;
    char dir[300], url[2100], labels[3000], text[8000];
    snprintf(dir, sizeof(dir), "/srv/%0250d", 7);
    int o = snprintf(url, sizeof(url), "https://queue.example/");
    while (o < 2000)
        o += snprintf(url + o, sizeof(url) - (size_t)o, "segment-%d/", o);
    o = 0;
    for (int i = 0; i < 150; i++)
        o += snprintf(labels + o, sizeof(labels) - (size_t)o, "%slabel%d", i ? "," : "", i);
    snprintf(text, sizeof(text),
             "# a comment that is longer than libinih's line buffer: %0200d\n"
             "[agent]\nstate_dir = %s\nrun_dir=%s/run ;inline comment %0200d\n"
             "[backend \"local\"]\n[pool \"default\"]\nbackends = local\nlabels=%s\n"
             "[source \"q\"]\ntype = http\nurl = %s\ntoken_file = %s/token\n",
             0, dir, dir, 0, labels, url, dir);
    struct config *c = load_ok(text);
    assert_string_equal(c->agent.state_dir, dir);
    char run[320];
    snprintf(run, sizeof(run), "%s/run", dir);
    assert_string_equal(c->agent.run_dir, run);
    assert_string_equal(c->sources[0].url, url);
    assert_string_equal(c->pools[0].labels[149], "label149");
    char *out = print(c);
    /* lines libinih cannot read whole are in it */
    size_t longest = 0;
    for (const char *l = out; *l;) {
        size_t n = strcspn(l, "\n");
        if (n > longest)
            longest = n;
        l += n + (l[n] ? 1 : 0);
    }
    assert_true(longest > 1000);
    struct config *again = load_ok(out);
    char *out2 = print(again);
    assert_string_equal(strchr(out, '\n'), strchr(out2, '\n'));
    assert_string_equal(again->sources[0].url, url);
    assert_string_equal(again->agent.run_dir, run);
    free(out);
    free(out2);
    config_free(again);
    config_free(c);
}

/* The GitHub source's keys: the shipped example parses, defaults fill the
 * rest, and keys of other source types are refused. */
static void test_github_source(void **state)
{
    (void)state;
    const char *src = getenv("AL_SOURCE_DIR");
    if (!src)
        test_skip("AL_SOURCE_DIR is not set: run through ctest");
    char *path = NULL;
    assert_true(asprintf(&path, "%s/ci/github/agentlab.conf.example", src) > 0);
    struct config *c = NULL;
    struct al_error *err = NULL;
    if (config_load(path, &c, &err) < 0)
        fail_msg("%s", al_error_message(err));
    free(path);
    const struct config_source *g = NULL;
    for (size_t i = 0; i < c->n_sources; i++) {
        if (c->sources[i].type == SOURCE_GITHUB)
            g = &c->sources[i];
    }
    assert_non_null(g);
    assert_string_equal(g->repo, "octo-org/example");
    assert_string_equal(g->org, "");
    assert_string_equal(g->app_id, "123456");
    assert_string_equal(g->labels[0], "agentlab");
    assert_int_equal(g->max_runners, 4);
    assert_int_equal(g->runner_group_id, 1);
    assert_int_equal(g->runner_idle_timeout_s, 300);
    assert_int_equal(g->poll_interval_s, 15);
    assert_int_equal(g->webhook_max_body, 1 << 20);
    assert_string_equal(g->webhook_listen, "127.0.0.1:8088");
    assert_string_equal(g->runner_dir, "/opt/actions-runner");
    assert_string_equal(g->url, ""); /* api.github.com */
    config_free(c);

    char *msg = load_err("[source \"g\"]\ntype = github\nclone = host\n");
    assert_non_null(strstr(msg, "test.conf:3: key \"clone\" does not apply to source type github"));
    free(msg);
    msg = load_err("[source \"g\"]\ntype = github\nrunner_idle_timeout = 1s\n");
    assert_non_null(strstr(msg, "bad value \"1s\" for key \"runner_idle_timeout\""));
    free(msg);
    msg = load_err("[source \"g\"]\ntype = gitlab\nurl = https://x\nrepo = a/b\n");
    assert_non_null(strstr(msg, "key \"repo\" does not apply to source type gitlab"));
    free(msg);
}

/* Found by fuzz_config: libinih hands over section names cut at 50 bytes,
 * so keys under [source "<a 63-byte name>"] used to land in a section with
 * a cut name ("needs a quoted name"). */
static void test_long_section_names(void **state)
{
    (void)state;
    const char *n63 = "b23456789012345678901234567890123456789012345678901234567890123";
    char text[512];
    snprintf(text, sizeof(text),
             "[backend \"%s\"]\nmax_vms = 3\n[pool \"default\"]\nbackends = %s\n"
             "[source \"%s\"]\nconcurrent = 7\n",
             n63, n63, n63);
    struct config *c = load_ok(text);
    assert_int_equal(c->n_backends, 1);
    assert_string_equal(c->backends[0].name, n63);
    assert_int_equal(c->backends[0].max_vms, 3);
    assert_int_equal(c->n_sources, 1);
    assert_int_equal(c->sources[0].concurrent, 7);
    config_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_defaults_without_file),
            cmocka_unit_test(test_accel_keys),
            cmocka_unit_test(test_transport_key),
            cmocka_unit_test(test_full_file),
            cmocka_unit_test(test_env_override),
            cmocka_unit_test(test_errors_name_file_line_key),
            cmocka_unit_test(test_long_line_and_nul),
            cmocka_unit_test(test_indented_lines),
            cmocka_unit_test(test_print_roundtrip),
            cmocka_unit_test(test_print_roundtrip_long_values),
            cmocka_unit_test(test_github_source),
            cmocka_unit_test(test_long_section_names),
    };
    return test_exit_status(cmocka_run_group_tests(tests, setup, NULL));
}
