/* The GitHub source's pure parts: HMAC-SHA256 (RFC 4231 vectors), webhook
 * signatures (GitHub's documented example), label matching, the workflow_job
 * parser on GitHub's real example payloads, the REST answer parsers, the
 * App JWT (verified with the public key), secret files and listen
 * addresses. */
#include "test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runner/base/base64.h"
#include "runner/base/buf.h"
#include "runner/base/hmac.h"
#include "runner/base/json_tree.h"
#include "runner/base/util.h"
#include "runner/base/hardlimits.h"
#include "runner/sources/github_auth.h"
#include "runner/sources/github_hook.h"
#include "runner/engine/spec.h"
#include "runner/sources/github_labels.h"
#include "runner/sources/github_payload.h"

static void hex(const uint8_t *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static size_t unhex(const char *s, uint8_t *out, size_t max)
{
    size_t n = strlen(s) / 2;
    assert_true(n <= max);
    for (size_t i = 0; i < n; i++) {
        unsigned v = 0;
        assert_int_equal(sscanf(s + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t)v;
    }
    return n;
}

/* RFC 4231 test cases 1, 2, 3, 4, 6 and 7 (6 and 7: a 131-byte key, longer than a
 * block, written as NULL below). */
static void test_hmac_rfc4231(void **state)
{
    (void)state;
    static const struct {
        const char *key_hex, *data_hex, *mac;
    } v[] = {
            {"0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", "4869205468657265",
             "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
            {"4a656665", "7768617420646f2079612077616e7420666f72206e6f7468696e673f",
             "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
            {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
             "dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
             "dddddddddddddddddd",
             "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"},
            {"0102030405060708090a0b0c0d0e0f10111213141516171819",
             "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd"
             "cdcdcdcdcdcdcdcdcd",
             "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"},
            {NULL,
             "54657374205573696e67204c6172676572205468616e20426c6f636b2d53697a65204b6579202d20"
             "48617368204b6579204669727374",
             "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
            {NULL,
             "5468697320697320612074657374207573696e672061206c6172676572207468616e20626c6f636b"
             "2d73697a65206b657920616e642061206c6172676572207468616e20626c6f636b2d73697a652064"
             "6174612e20546865206b6579206e6565647320746f20626520686173686564206265666f72652062"
             "65696e6720757365642062792074686520484d414320616c676f726974686d2e",
             "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(v); i++) {
        uint8_t key[256], data[256], mac[AL_SHA256_DIGEST_SIZE];
        size_t kl;
        if (v[i].key_hex) {
            kl = unhex(v[i].key_hex, key, sizeof(key));
        } else {
            kl = 131;
            memset(key, 0xaa, kl);
        }
        size_t dl = unhex(v[i].data_hex, data, sizeof(data));
        al_hmac_sha256(key, kl, data, dl, mac);
        char got[2 * AL_SHA256_DIGEST_SIZE + 1];
        hex(mac, sizeof(mac), got);
        assert_string_equal(got, v[i].mac);
    }
}

/* GitHub's own example from "Validating webhook deliveries". */
static void test_signature(void **state)
{
    (void)state;
    static const char secret[] = "It's a Secret to Everybody";
    static const char body[] = "Hello, World!";
    static const char good[] =
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    size_t sl = strlen(secret), bl = strlen(body);
    assert_true(github_signature_valid(secret, sl, body, bl, good));
    /* upper-case hex is the same digest */
    assert_true(github_signature_valid(
            secret, sl, body, bl,
            "sha256=757107EA0EB2509FC211221CCE984B8A37570B6D7586C22C46F4379C8B043E17"));
    /* one flipped nibble, the body changed, the wrong secret */
    assert_false(github_signature_valid(
            secret, sl, body, bl,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e16"));
    assert_false(github_signature_valid(secret, sl, "Hello, World?", bl, good));
    assert_false(github_signature_valid("It's a secret to everybody", sl, body, bl, good));
    /* malformed headers */
    assert_false(github_signature_valid(secret, sl, body, bl, NULL));
    assert_false(github_signature_valid(secret, sl, body, bl, ""));
    assert_false(github_signature_valid(
            secret, sl, body, bl,
            "sha1=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"));
    assert_false(github_signature_valid(
            secret, sl, body, bl,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1"));
    assert_false(github_signature_valid(
            secret, sl, body, bl,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e177"));
    assert_false(github_signature_valid(
            secret, sl, body, bl,
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e1g"));
    assert_false(github_signature_valid(
            secret, sl, body, bl,
            " sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"));

    assert_true(github_delivery_id_valid("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
    assert_false(github_delivery_id_valid(""));
    assert_false(github_delivery_id_valid("72d3162e cc78"));
    assert_false(github_delivery_id_valid("../../etc/passwd"));
    char longid[70];
    memset(longid, 'a', 65);
    longid[65] = '\0';
    assert_false(github_delivery_id_valid(longid));
}

static void test_labels(void **state)
{
    (void)state;
    char *pool[] = {"self-hosted", "Linux", "X64", "agentlab", "gpu", NULL};
    char *ok1[] = {"self-hosted", "agentlab"};
    char *ok2[] = {"SELF-HOSTED", "linux", "Agentlab"};
    char *ok3[] = {"agentlab", "agentlab"};
    char *extra[] = {"self-hosted", "agentlab", "arm64"};
    char *other[] = {"ubuntu-latest"};
    char *prefix[] = {"agent"};
    assert_true(github_labels_match(ok1, 2, pool, 5));
    assert_true(github_labels_match(ok2, 3, pool, 5));
    assert_true(github_labels_match(ok3, 2, pool, 5));
    assert_false(github_labels_match(extra, 3, pool, 5));
    assert_false(github_labels_match(other, 1, pool, 5));
    assert_false(github_labels_match(prefix, 1, pool, 5));
    /* no labels: not a job for self-hosted runners */
    assert_false(github_labels_match(NULL, 0, pool, 5));
    assert_false(github_labels_match(ok1, 2, NULL, 0));

    assert_true(github_repo_is_valid("octo-org/example-workflow"));
    assert_true(github_repo_is_valid("a/b.c_d-e"));
    assert_false(github_repo_is_valid("octo-org"));
    assert_false(github_repo_is_valid("/name"));
    assert_false(github_repo_is_valid("owner/"));
    assert_false(github_repo_is_valid("owner/.."));
    assert_false(github_repo_is_valid("owner/a/b"));
    assert_false(github_repo_is_valid("own_er/name"));
    assert_true(github_login_is_valid("octo-org"));
    assert_false(github_login_is_valid("octo/org"));
    assert_false(github_login_is_valid(""));
}

static void wants_ok(const char *const *labels, size_t n, struct github_job_wants *w)
{
    struct al_error *err = NULL;
    int r = github_job_wants_parse((char *const *)labels, n, w, &err);
    if (r < 0)
        fail_msg("%s", al_error_message(err));
}

static void wants_bad(const char *label, const char *needle)
{
    const char *labels[] = {"self-hosted", label};
    struct github_job_wants w = {.cpus = 99};
    struct al_error *err = NULL;
    assert_int_equal(github_job_wants_parse((char *const *)labels, 2, &w, &err), -EINVAL);
    if (!strstr(al_error_message(err), needle))
        fail_msg("%s: %s", label, al_error_message(err));
    assert_non_null(strstr(al_error_message(err), label));
    assert_int_equal(w.cpus, 99); /* untouched on failure */
    al_error_free(err);
}

/* The label forms that size a runner's VM (github_labels.h). */
static void test_job_wants(void **state)
{
    (void)state;
    struct github_job_wants w;
    const char *plain[] = {"self-hosted", "linux", "big"};
    wants_ok(plain, 3, &w);
    assert_int_equal(w.cpus, 0);
    assert_int_equal(w.memory_mb, 0);
    assert_null(w.image);
    assert_int_equal(w.n_labels, 3);
    assert_string_equal(w.labels[2], "big");
    assert_null(w.labels[3]);
    github_job_wants_clear(&w);

    const char *all[] = {"self-hosted", "agentlab-cpu-4", "big", "agentlab-mem-8g",
                         "agentlab-image-debian-12-actions"};
    wants_ok(all, 5, &w);
    assert_int_equal(w.cpus, 4);
    assert_int_equal(w.memory_mb, 8192);
    assert_string_equal(w.image, "debian-12-actions");
    assert_int_equal(w.n_labels, 2);
    assert_string_equal(w.labels[0], "self-hosted");
    assert_string_equal(w.labels[1], "big");
    github_job_wants_clear(&w);
    github_job_wants_clear(&w); /* twice is fine */

    /* GitHub compares labels without case: so do the prefix and the unit */
    const char *upper[] = {"AgentLab-CPU-64", "AGENTLAB-MEM-1536M", "agentlab-IMAGE-Micro"};
    wants_ok(upper, 3, &w);
    assert_int_equal(w.cpus, JOB_SPEC_MAX_CPUS);
    assert_int_equal(w.memory_mb, 1536);
    assert_string_equal(w.image, "Micro"); /* the name as written */
    assert_int_equal(w.n_labels, 0);
    assert_null(w.labels[0]);
    github_job_wants_clear(&w);

    const char *edges[] = {"agentlab-mem-128m", "agentlab-cpu-1", "agentlab-mem"};
    wants_ok(edges, 3, &w);
    assert_int_equal(w.memory_mb, JOB_SPEC_MIN_MEMORY_MB);
    assert_int_equal(w.cpus, 1);
    /* not one of the prefixes (no dash after "mem"): an ordinary label */
    assert_int_equal(w.n_labels, 1);
    assert_string_equal(w.labels[0], "agentlab-mem");
    github_job_wants_clear(&w);

    const char *top[] = {"agentlab-mem-512g"};
    wants_ok(top, 1, &w);
    assert_int_equal(w.memory_mb, JOB_SPEC_MAX_MEMORY_MB);
    github_job_wants_clear(&w);

    wants_ok(NULL, 0, &w);
    assert_int_equal(w.n_labels, 0);
    assert_non_null(w.labels);
    github_job_wants_clear(&w);

    wants_bad("agentlab-cpu-0", "N from 1 to 64");
    wants_bad("agentlab-cpu-65", "N from 1 to 64");
    wants_bad("agentlab-cpu-04", "N from 1 to 64");
    wants_bad("agentlab-cpu-+4", "N from 1 to 64");
    wants_bad("agentlab-cpu-4x", "N from 1 to 64");
    wants_bad("agentlab-cpu-", "N from 1 to 64");
    wants_bad("agentlab-cpu-99999999999999999999", "N from 1 to 64");
    wants_bad("agentlab-mem-8", "GiB or MiB");
    wants_bad("agentlab-mem-8gb", "GiB or MiB");
    wants_bad("agentlab-mem-8k", "GiB or MiB");
    wants_bad("agentlab-mem-127m", "GiB or MiB");
    wants_bad("agentlab-mem-513g", "GiB or MiB");
    wants_bad("agentlab-mem-0g", "GiB or MiB");
    wants_bad("agentlab-mem--1g", "GiB or MiB");
    wants_bad("agentlab-mem-1.5g", "GiB or MiB");
    wants_bad("agentlab-image-", "image name");
    wants_bad("agentlab-image-debian:12", "image name");
    wants_bad("agentlab-image-../etc", "image name");
    wants_bad("agentlab-image-x.lock", "image name");

    const char *dup_cpu[] = {"agentlab-cpu-2", "agentlab-cpu-2"};
    const char *dup_mem[] = {"agentlab-mem-1g", "agentlab-mem-2048m"};
    const char *dup_img[] = {"agentlab-image-a", "agentlab-image-b"};
    const char *const *dups[] = {dup_cpu, dup_mem, dup_img};
    for (size_t i = 0; i < ARRAY_SIZE(dups); i++) {
        struct al_error *err = NULL;
        assert_int_equal(github_job_wants_parse((char *const *)dups[i], 2, &w, &err), -EINVAL);
        assert_non_null(strstr(al_error_message(err), "twice"));
        al_error_free(err);
    }
}

/* The vendored examples (tests/contracts/README.md); ctest sets AL_SOURCE_DIR. */
static char *examples_path(void)
{
    const char *src = getenv("AL_SOURCE_DIR");
    if (!src)
        fail_msg("AL_SOURCE_DIR is not set: run this test through ctest");
    char *p = NULL;
    assert_true(asprintf(&p, "%s/tests/contracts/workflow_job-webhook-examples.json", src) > 0);
    return p;
}

/* Splits the examples array into its top-level objects (the parser takes one
 * delivery at a time). */
static size_t split_examples(char *doc, char **starts, size_t *lens, size_t max)
{
    size_t n = 0;
    int depth = 0;
    bool in_str = false;
    char *start = NULL;
    for (char *p = doc; *p; p++) {
        if (in_str) {
            if (*p == '\\')
                p++;
            else if (*p == '"')
                in_str = false;
            continue;
        }
        if (*p == '"') {
            in_str = true;
        } else if (*p == '{') {
            if (depth++ == 1)
                start = p;
        } else if (*p == '}') {
            if (--depth == 1 && start && n < max) {
                starts[n] = start;
                lens[n++] = (size_t)(p + 1 - start);
            }
        } else if (*p == '[' && depth == 0) {
            depth = 1;
        }
    }
    return n;
}

static void test_webhook_examples(void **state)
{
    (void)state;
    _cleanup_free_ char *path = examples_path();
    _cleanup_free_ char *doc = NULL;
    size_t len = 0;
    if (al_read_file(path, 1 << 20, &doc, &len, NULL) < 0)
        fail_msg("cannot read %s", path);
    char *starts[32];
    size_t lens[32];
    size_t n = split_examples(doc, starts, lens, 32);
    assert_true(n >= 4);
    unsigned queued = 0, in_progress = 0, completed = 0;
    for (size_t i = 0; i < n; i++) {
        struct github_job *j = NULL;
        struct al_error *err = NULL;
        int r = github_webhook_parse(starts[i], lens[i], &j, &err);
        if (r < 0)
            fail_msg("example %zu: %s", i, al_error_message(err));
        assert_true(j->id > 0 && j->run_id > 0);
        assert_true(github_repo_is_valid(j->repo));
        assert_non_null(j->labels);
        assert_int_equal(j->labels[j->n_labels], NULL);
        switch (j->action) {
        case GITHUB_ACTION_QUEUED:
            queued++;
            /* a queued delivery can say "waiting" (an environment's gate) */
            assert_true(streq(j->status, "queued") || streq(j->status, "waiting"));
            assert_null(j->conclusion);
            break;
        case GITHUB_ACTION_IN_PROGRESS:
            in_progress++;
            assert_non_null(j->runner_name);
            break;
        case GITHUB_ACTION_COMPLETED:
            completed++;
            assert_non_null(j->conclusion);
            break;
        default:
            break;
        }
        github_job_free(j);
    }
    assert_true(queued >= 1 && in_progress >= 1 && completed >= 1);
}

static int parse_hook(const char *doc, struct github_job **ret, char *msg, size_t size)
{
    struct al_error *err = NULL;
    int r = github_webhook_parse(doc, strlen(doc), ret, &err);
    snprintf(msg, size, "%s", r < 0 ? al_error_message(err) : "");
    al_error_free(err);
    return r;
}

#define HOOK(action, job)                              \
    "{\"action\":\"" action "\",\"workflow_job\":" job \
    ",\"repository\":{\"full_name\":\"octo-org/demo\"},\"installation\":{\"id\":77}}"

static void test_webhook_parse(void **state)
{
    (void)state;
    struct github_job *j = NULL;
    char msg[400];
    assert_int_equal(parse_hook(HOOK("queued", "{\"id\":5,\"run_id\":6,\"status\":\"queued\","
                                               "\"labels\":[\"self-hosted\",\"agentlab\"],"
                                               "\"runner_name\":\"\",\"name\":\"build\"}"),
                                &j, msg, sizeof(msg)),
                     0);
    assert_int_equal(j->action, GITHUB_ACTION_QUEUED);
    assert_int_equal(j->id, 5);
    assert_int_equal(j->n_labels, 2);
    assert_string_equal(j->labels[1], "agentlab");
    assert_null(j->runner_name); /* "" means none */
    assert_int_equal(j->installation_id, 77);
    assert_string_equal(j->repo, "octo-org/demo");
    j = github_job_free(j);

    /* an action this build does not know is kept as OTHER, not an error */
    assert_int_equal(parse_hook(HOOK("frobnicated", "{\"id\":5,\"run_id\":6,\"status\":"
                                                    "\"queued\",\"labels\":[]}"),
                                &j, msg, sizeof(msg)),
                     0);
    assert_int_equal(j->action, GITHUB_ACTION_OTHER);
    j = github_job_free(j);

    static const struct {
        const char *doc, *want;
    } bad[] = {
            {HOOK("queued", "{\"run_id\":6,\"status\":\"queued\",\"labels\":[]}"),
             "workflow_job.id: missing"},
            {HOOK("queued", "{\"id\":\"5\",\"run_id\":6,\"status\":\"queued\",\"labels\":[]}"),
             "workflow_job.id: expected an integer, got a string"},
            {HOOK("queued", "{\"id\":5,\"run_id\":6,\"status\":\"queued\",\"labels\":[1]}"),
             "workflow_job.labels[0]: expected a string, got an integer"},
            {HOOK("queued", "{\"id\":5,\"run_id\":6,\"status\":\"queued\"}"),
             "workflow_job.labels: missing"},
            {HOOK("queued", "{\"id\":5,\"id\":6,\"run_id\":6,\"status\":\"queued\",\"labels\":[]}"),
             "workflow_job.id: given more than once"},
            {HOOK("queued", "{\"id\":5,\"run_id\":6,\"status\":\"Queued!\",\"labels\":[]}"),
             "workflow_job.status: expected lower-case letters and '_'"},
            {HOOK("queued", "{\"id\":0,\"run_id\":6,\"status\":\"queued\",\"labels\":[]}"),
             "workflow_job.id: expected an integer from 1 to"},
            {"{\"action\":\"queued\",\"workflow_job\":{\"id\":5,\"run_id\":6,\"status\":"
             "\"queued\",\"labels\":[]},\"repository\":{\"full_name\":\"../x\"}}",
             "repository.full_name: expected OWNER/NAME"},
            {"[1,2]", "expected a JSON object"},
            {"{\"action\":", "not valid JSON"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        j = NULL;
        assert_true(parse_hook(bad[i].doc, &j, msg, sizeof(msg)) < 0);
        assert_null(j);
        if (!strstr(msg, bad[i].want))
            fail_msg("case %zu: \"%s\" does not say \"%s\"", i, msg, bad[i].want);
    }

    /* nesting and size are bounded before a tree is built */
    char deep[200];
    size_t o = 0;
    o += (size_t)snprintf(deep, sizeof(deep), "{\"a\":");
    for (int i = 0; i < 40; i++)
        deep[o++] = '[';
    deep[o] = '\0';
    assert_true(parse_hook(deep, &j, msg, sizeof(msg)) < 0);
    assert_non_null(strstr(msg, "nests deeper"));
    /* half a surrogate pair: refused by the shared pre-scan, naming where */
    assert_true(parse_hook("{\"action\":\"queued\",\"workflow_job\":{\"name\":\"\\udc00\"}}", &j,
                           msg, sizeof(msg)) < 0);
    assert_string_equal(msg, "workflow_job.name: has a lone UTF-16 surrogate escape \\udc00, "
                             "which is not text");
    struct al_error *err = NULL;
    assert_int_equal(github_webhook_parse("{\"a\":1}\0x", 9, &j, &err), -EINVAL);
    err = al_error_free(err);
    assert_int_equal(github_webhook_parse("{}", GITHUB_MAX_DOCUMENT + 1, &j, &err), -E2BIG);
    al_error_free(err);
}

static void test_rest_answers(void **state)
{
    (void)state;
    struct al_error *err = NULL;
    int64_t id = 0;
    char *cfg = NULL;
    static const char jit[] = "{\"runner\":{\"id\":23,\"name\":\"agentlab-1\",\"os\":\"unknown\","
                              "\"status\":\"offline\",\"busy\":false,\"labels\":[]},"
                              "\"encoded_jit_config\":\"eyJzZWNyZXQiOiJ4In0=\"}";
    assert_int_equal(github_parse_jitconfig(jit, strlen(jit), &id, &cfg, &err), 0);
    assert_int_equal(id, 23);
    assert_string_equal(cfg, "eyJzZWNyZXQiOiJ4In0=");
    free(cfg);
    static const char jit_bad[] = "{\"runner\":{\"id\":23},\"encoded_jit_config\":\"not base64!\"}";
    assert_int_equal(github_parse_jitconfig(jit_bad, strlen(jit_bad), &id, &cfg, &err), -EINVAL);
    /* the message names the field, never its value */
    assert_non_null(strstr(al_error_message(err), "encoded_jit_config"));
    assert_null(strstr(al_error_message(err), "not base64"));
    err = al_error_free(err);
    static const char jit_noid[] = "{\"encoded_jit_config\":\"eyJzZWNyZXQiOiJ4In0=\"}";
    assert_int_equal(github_parse_jitconfig(jit_noid, strlen(jit_noid), &id, &cfg, &err), -EINVAL);
    err = al_error_free(err);

    static const char runners[] =
            "{\"total_count\":2,\"runners\":[{\"id\":1,\"name\":\"a\",\"os\":\"linux\","
            "\"status\":\"online\",\"busy\":true,\"labels\":[]},{\"id\":2,\"name\":\"b\","
            "\"os\":\"linux\",\"status\":\"offline\",\"busy\":false,\"labels\":[]}]}";
    struct github_runner_list rl = {0};
    assert_int_equal(github_parse_runners(runners, strlen(runners), &rl, &err), 0);
    assert_int_equal(rl.n, 2);
    assert_int_equal(rl.total_count, 2);
    assert_true(rl.v[0].busy);
    assert_false(rl.v[1].busy);
    assert_string_equal(rl.v[1].name, "b");
    github_runner_list_clear(&rl);
    static const char runners_bad[] = "{\"total_count\":1,\"runners\":[{\"id\":1}]}";
    assert_int_equal(github_parse_runners(runners_bad, strlen(runners_bad), &rl, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "runners[0].name: missing"));
    err = al_error_free(err);

    static const char runs[] = "{\"total_count\":1,\"workflow_runs\":[{\"id\":30433642,"
                               "\"status\":\"queued\",\"updated_at\":\"2020-01-22T19:33:08Z\"}]}";
    struct github_run_list rn = {0};
    assert_int_equal(github_parse_runs(runs, strlen(runs), &rn, &err), 0);
    assert_int_equal(rn.n, 1);
    assert_int_equal(rn.v[0].id, 30433642);
    assert_string_equal(rn.v[0].status, "queued");
    github_run_list_clear(&rn);

    static const char jobs[] =
            "{\"total_count\":1,\"jobs\":[{\"id\":399444496,\"run_id\":29679449,\"status\":"
            "\"completed\",\"conclusion\":\"success\",\"labels\":[\"self-hosted\"],"
            "\"runner_id\":1,\"runner_name\":\"my runner\",\"name\":\"build\"}]}";
    struct github_job_list jl = {0};
    assert_int_equal(github_parse_jobs(jobs, strlen(jobs), &jl, &err), 0);
    assert_int_equal(jl.n, 1);
    assert_int_equal(jl.v[0]->action, GITHUB_ACTION_NONE);
    assert_string_equal(jl.v[0]->conclusion, "success");
    assert_string_equal(jl.v[0]->runner_name, "my runner");
    github_job_list_clear(&jl);

    static const char token[] = "{\"token\":\"ghs_16C7e42F292c6912E7710c838347Ae178B4a\","
                                "\"expires_at\":\"2016-07-11T22:14:10Z\",\"permissions\":{}}";
    char *tok = NULL;
    int64_t exp = 0;
    assert_int_equal(github_parse_token(token, strlen(token), &tok, &exp, &err), 0);
    assert_string_equal(tok, "ghs_16C7e42F292c6912E7710c838347Ae178B4a");
    assert_int_equal(exp, 1468275250);
    free(tok);
    static const char token_bad[] =
            "{\"token\":\"ghs_x y\",\"expires_at\":\"2016-07-11T22:14:10Z\"}";
    assert_true(github_parse_token(token_bad, strlen(token_bad), &tok, &exp, &err) < 0);
    assert_null(strstr(al_error_message(err), "ghs_"));
    err = al_error_free(err);

    int64_t t = 0;
    assert_int_equal(github_parse_time("1970-01-01T00:00:00Z", &t), 0);
    assert_int_equal(t, 0);
    assert_int_equal(github_parse_time("2016-07-11T22:14:10+01:00", &t), -EINVAL);
    assert_int_equal(github_parse_time("2016-13-11T22:14:10Z", &t), -EINVAL);

    static const char inst[] = "{\"id\":1,\"account\":{\"login\":\"octocat\"}}";
    assert_int_equal(github_parse_installation(inst, strlen(inst), &id, &err), 0);
    assert_int_equal(id, 1);

    char m[32];
    static const char emsg[] = "{\"message\":\"API rate limit\\nexceeded for installation "
                               "ID 77.\",\"documentation_url\":\"x\"}";
    github_error_message(emsg, strlen(emsg), m, sizeof(m));
    assert_string_equal(m, "API rate limit?exceeded for ins");
    github_error_message("<html>", 6, m, sizeof(m));
    assert_string_equal(m, "");
}

/* ---- the App JWT ---- */

static char *b64url_to_std(const char *s, size_t n)
{
    char *out = calloc(n + 4, 1);
    assert_non_null(out);
    for (size_t i = 0; i < n; i++)
        out[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
    while (n % 4)
        out[n++] = '=';
    return out;
}

static char *decode_part(const char *s, size_t n)
{
    _cleanup_free_ char *std = b64url_to_std(s, n);
    struct al_buf b = AL_BUF_INIT;
    assert_int_equal(al_base64_decode(&b, std, strlen(std)), 0);
    assert_int_equal(al_buf_append(&b, "", 1), 0);
    return al_buf_steal(&b);
}

static void test_app_jwt(void **state)
{
    (void)state;
    EVP_PKEY *key = EVP_RSA_gen(2048);
    assert_non_null(key);
    BIO *bio = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL), 1);
    char *pem = NULL;
    long pem_len = BIO_get_mem_data(bio, &pem);
    assert_true(pem_len > 0);

    char *jwt = NULL;
    struct al_error *err = NULL;
    assert_int_equal(github_app_jwt(pem, (size_t)pem_len, "123456", 1700000000, &jwt, &err), 0);
    char *dot1 = strchr(jwt, '.');
    char *dot2 = dot1 ? strchr(dot1 + 1, '.') : NULL;
    assert_non_null(dot2);
    assert_null(strchr(dot2 + 1, '.'));
    assert_null(strpbrk(jwt, "+/="));
    _cleanup_free_ char *head = decode_part(jwt, (size_t)(dot1 - jwt));
    _cleanup_free_ char *claims = decode_part(dot1 + 1, (size_t)(dot2 - dot1 - 1));
    assert_string_equal(head, "{\"alg\":\"RS256\",\"typ\":\"JWT\"}");
    /* iat a minute back for clock drift, exp within GitHub's 10 minutes */
    assert_string_equal(claims, "{\"iat\":1699999940,\"exp\":1700000540,\"iss\":\"123456\"}");

    /* the signature verifies with the public key over "header.claims" */
    _cleanup_free_ char *sig_std = b64url_to_std(dot2 + 1, strlen(dot2 + 1));
    struct al_buf sig = AL_BUF_INIT;
    assert_int_equal(al_base64_decode(&sig, sig_std, strlen(sig_std)), 0);
    assert_int_equal(sig.len, 256);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key), 1);
    assert_int_equal(EVP_DigestVerify(ctx, (const unsigned char *)sig.data, sig.len,
                                      (const unsigned char *)jwt, (size_t)(dot2 - jwt)),
                     1);
    EVP_MD_CTX_free(ctx);
    al_buf_free(&sig);
    free(jwt);

    /* what is refused: a bad issuer, a key that is not PEM, a non-RSA key */
    assert_int_equal(github_app_jwt(pem, (size_t)pem_len, "12 34", 1700000000, &jwt, &err),
                     -EINVAL);
    err = al_error_free(err);
    assert_int_equal(github_app_jwt("not a key", 9, "1", 1700000000, &jwt, &err), -EINVAL);
    err = al_error_free(err);
    EVP_PKEY *ec = EVP_EC_gen("P-256");
    BIO *bio2 = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PrivateKey(bio2, ec, NULL, NULL, 0, NULL, NULL), 1);
    char *ecpem = NULL;
    long ec_len = BIO_get_mem_data(bio2, &ecpem);
    assert_int_equal(github_app_jwt(ecpem, (size_t)ec_len, "1", 1700000000, &jwt, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "RSA"));
    al_error_free(err);
    BIO_free(bio2);
    EVP_PKEY_free(ec);
    BIO_free(bio);
    EVP_PKEY_free(key);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "we");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
}

static void test_secret_files(void **state)
{
    (void)state;
    char *dir = test_tmpdir("github");
    char path[512];
    snprintf(path, sizeof(path), "%s/secret", dir);
    char *s = NULL;
    struct al_error *err = NULL;

    write_file(path, "  s3cret-webhook-value\n\n", 0600);
    assert_int_equal(github_read_secret(path, "webhook_secret", 8, &s, &err), 0);
    assert_string_equal(s, "s3cret-webhook-value");
    free(s);

    write_file(path, "s3cret-webhook-value\n", 0644);
    assert_int_equal(github_read_secret(path, "webhook_secret", 8, &s, &err), -EPERM);
    assert_null(strstr(al_error_message(err), "s3cret"));
    err = al_error_free(err);

    write_file(path, "two words here\n", 0600);
    assert_int_equal(github_read_secret(path, "token", 8, &s, &err), -EINVAL);
    assert_null(strstr(al_error_message(err), "words"));
    err = al_error_free(err);

    write_file(path, "short\n", 0600);
    assert_int_equal(github_read_secret(path, "token", 8, &s, &err), -EINVAL);
    err = al_error_free(err);

    snprintf(path, sizeof(path), "%s/absent", dir);
    assert_true(github_read_secret(path, "token", 8, &s, &err) < 0);
    al_error_free(err);
    test_tmpdir_remove(dir);
}

/* ---- the webhook listener, over real TCP ---- */

#define HOOK_SECRET "hook-secret-for-tests-0001"

struct hook_case {
    const char *method;
    const char *content_type; /* NULL = none */
    const char *event;
    const char *delivery; /* NULL = none */
    const char *body;
    size_t body_len;       /* 0 = strlen(body) */
    const char *signature; /* NULL = the right one, "" = none */
    int want;
    int status; /* filled by the client */
};

struct hook_run {
    int port;
    struct hook_case *cases;
    size_t n;
    uv_async_t async;
    bool done;
    unsigned jobs;
    int64_t last_job;
};

static int send_case(int port, struct hook_case *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        close(fd);
        return -1;
    }
    size_t blen = c->body_len ? c->body_len : strlen(c->body);
    char sig[80] = "";
    if (!c->signature) {
        uint8_t mac[AL_SHA256_DIGEST_SIZE];
        al_hmac_sha256(HOOK_SECRET, strlen(HOOK_SECRET), c->body, blen, mac);
        memcpy(sig, "sha256=", 7);
        hex(mac, sizeof(mac), sig + 7);
    } else {
        snprintf(sig, sizeof(sig), "%s", c->signature);
    }
    char head[1024];
    int n = snprintf(head, sizeof(head),
                     "%s / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: GitHub-Hookshot/test\r\n"
                     "Connection: close\r\nContent-Length: %zu\r\n%s%s%s"
                     "X-GitHub-Event: %s\r\n%s%s%s%s%s%s\r\n",
                     c->method, blen, c->content_type ? "Content-Type: " : "",
                     c->content_type ? c->content_type : "", c->content_type ? "\r\n" : "",
                     c->event, c->delivery ? "X-GitHub-Delivery: " : "",
                     c->delivery ? c->delivery : "", c->delivery ? "\r\n" : "",
                     *sig ? "X-Hub-Signature-256: " : "", sig, *sig ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof(head) || write(fd, head, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    /* the server may answer (413, 415) before the body is in: ignore EPIPE */
    size_t off = 0;
    while (off < blen) {
        ssize_t w = send(fd, c->body + off, blen - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    char resp[256] = "";
    ssize_t got = read(fd, resp, sizeof(resp) - 1);
    close(fd);
    if (got < 12)
        return -1;
    resp[got] = '\0';
    int status = -1;
    char code[4] = {resp[9], resp[10], resp[11], '\0'};
    if (strncmp(resp, "HTTP/1.1 ", 9) != 0 || al_parse_int(code, 100, 599, &status) < 0)
        return -1;
    return status;
}

static void *hook_client(void *arg)
{
    struct hook_run *run = arg;
    for (size_t i = 0; i < run->n; i++)
        run->cases[i].status = send_case(run->port, &run->cases[i]);
    uv_async_send(&run->async);
    return NULL;
}

static void on_client_done(uv_async_t *a)
{
    struct hook_run *run = a->data;
    run->done = true;
}

static void on_hook_job(const struct github_job *job, const char *delivery, void *data)
{
    struct hook_run *run = data;
    (void)delivery;
    run->jobs++;
    run->last_job = job->id;
}

static void on_hook_stopped(void *data)
{
    *(bool *)data = true;
}

static void test_hook(void **state)
{
    (void)state;
    char *dir = test_tmpdir("github-hook");
    char path[512];
    snprintf(path, sizeof(path), "%s/secret", dir);
    write_file(path, HOOK_SECRET "\n", 0600);

    static const char job[] = HOOK("queued", "{\"id\":42,\"run_id\":6,\"status\":\"queued\","
                                             "\"labels\":[\"self-hosted\"]}");
    static const char broken[] = HOOK("queued", "{\"id\":42}");
    static char big[4096];
    memset(big, ' ', sizeof(big) - 1);
    big[0] = '{';
    big[sizeof(big) - 2] = '}';
    static const char *const json = "application/json";
    struct hook_case cases[] = {
            {"GET", NULL, "workflow_job", "d-1", "", 0, NULL, 405, 0},
            {"POST", "text/plain", "workflow_job", "d-2", job, 0, NULL, 415, 0},
            {"POST", json, "workflow_job", "d-3", big, 0, NULL, 413, 0},
            {"POST", json, "workflow_job", "d-4", job, 0, "", 401, 0},
            {"POST", json, "workflow_job", "d-5", job, 0,
             "sha256=0000000000000000000000000000000000000000000000000000000000000000", 401, 0},
            {"POST", json, "workflow_job", NULL, job, 0, NULL, 400, 0},
            {"POST", json, "ping", "d-6", "{\"zen\":\"Design for failure.\"}", 0, NULL, 200, 0},
            {"POST", json, "push", "d-7", "{}", 0, NULL, 200, 0},
            {"POST", json, "workflow_job", "d-8", broken, 0, NULL, 400, 0},
            {"POST", json, "workflow_job", "d-9", job, 0, NULL, 202, 0},
            /* a redelivery keeps its id */
            {"POST", json, "workflow_job", "d-9", job, 0, NULL, 200, 0},
            {"POST", "application/json; charset=utf-8", "workflow_job", "d-10", job, 0, NULL, 202,
             0},
    };
    uint64_t webhook_hits = limits_hits(AL_LIMIT_WEBHOOK_BODY);
    uint64_t api_hits = limits_hits(AL_LIMIT_API_BODY);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct hook_run run = {.cases = cases, .n = ARRAY_SIZE(cases)};
    struct github_hook_params p = {
            .loop = &loop,
            .name = "test",
            .listen = "127.0.0.1:0",
            .secret_file = path,
            .max_body = 2048,
            .on_job = on_hook_job,
            .data = &run,
    };
    struct github_hook *h = NULL;
    struct al_error *err = NULL;
    if (github_hook_new(&p, &h, &err) < 0)
        fail_msg("%s", al_error_message(err));
    run.port = github_hook_port(h);
    assert_true(run.port > 0);
    uv_async_init(&loop, &run.async, on_client_done);
    run.async.data = &run;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, hook_client, &run), 0);
    bool finished = test_run_until(&loop, &run.done, 20000);
    pthread_join(t, NULL);
    assert_true(finished);
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        if (cases[i].status != cases[i].want)
            fail_msg("case %zu (%s %s, delivery %s): got %d, want %d", i, cases[i].method,
                     cases[i].event, cases[i].delivery ? cases[i].delivery : "none",
                     cases[i].status, cases[i].want);
    }
    assert_int_equal(run.jobs, 2);
    assert_int_equal(run.last_job, 42);
    /* the oversized delivery counts as the webhook limit, not the API's */
    assert_int_equal(limits_hits(AL_LIMIT_WEBHOOK_BODY), webhook_hits + 1);
    assert_int_equal(limits_hits(AL_LIMIT_API_BODY), api_hits);
    struct github_hook_stats st;
    github_hook_stats(h, &st);
    assert_int_equal(st.bad_signature, 2);
    assert_int_equal(st.duplicates, 1);
    assert_int_equal(st.accepted, 2);

    bool stopped = false;
    github_hook_stop(h, on_hook_stopped, &stopped);
    uv_close((uv_handle_t *)&run.async, NULL);
    assert_true(test_run_until(&loop, &stopped, 5000));
    test_loop_close(&loop);

    /* a world-readable secret file is refused before anything listens */
    write_file(path, HOOK_SECRET "\n", 0644);
    assert_int_equal(github_hook_new(&p, &h, &err), -EPERM);
    al_error_free(err);
    test_tmpdir_remove(dir);
}

static void test_listen(void **state)
{
    (void)state;
    char host[64];
    int port = -1;
    struct al_error *err = NULL;
    assert_int_equal(al_parse_host_port("127.0.0.1:8080", "w", host, sizeof(host), &port, &err), 0);
    assert_string_equal(host, "127.0.0.1");
    assert_int_equal(port, 8080);
    assert_int_equal(al_parse_host_port("[::1]:0", "w", host, sizeof(host), &port, &err), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 0);
    static const char *const bad[] = {"8080",      ":8080",        "127.0.0.1:", "127.0.0.1:65536",
                                      "[::1]8080", "127.0.0.1:80x"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        assert_int_equal(al_parse_host_port(bad[i], "w", host, sizeof(host), &port, &err), -EINVAL);
        err = al_error_free(err);
    }
}

/* The typed getters of base/json_tree that both forge parsers use: absent
 * and null are the same, they keep the caller's default unless required,
 * and a wrong type names the path and both types. */
static void test_json_getters(void **state)
{
    (void)state;
    static const char doc[] = "{\"n\": null, \"i\": 7, \"s\": \"a b\", \"b\": true, "
                              "\"o\": {}, \"a\": [\"x\", \"\"], \"big\": [1, 2, 3], "
                              "\"dup\": 1, \"dup\": 2}";
    yajl_val root = NULL;
    struct al_error *err = NULL;
    assert_int_equal(al_json_parse(doc, sizeof(doc) - 1, 4096, 8, 100, "doc", &root, &err), 0);

    /* absent and null: defaults stay, required ones are missing */
    int64_t i = 42;
    bool b = true;
    char *s = NULL;
    char **v = NULL;
    size_t n = 9;
    yajl_val o = root;
    for (int k = 0; k < 2; k++) {
        const char *key = k ? "n" : "absent";
        assert_int_equal(al_json_get_int(root, key, "", 0, 10, false, &i, &err), 0);
        assert_int_equal(al_json_get_bool(root, key, "", false, &b, &err), 0);
        assert_int_equal(al_json_get_string(root, key, "", 10, false, NULL, &s, &err), 0);
        assert_int_equal(al_json_get_strv(root, key, "", 10, 10, false, NULL, &v, &n, &err), 0);
        assert_int_equal(al_json_get_object(root, key, "", false, &o, &err), 0);
        assert_int_equal(i, 42);
        assert_true(b);
        assert_null(s);
        assert_null(v);
        assert_int_equal(n, 9);
        assert_ptr_equal(o, root);
        assert_int_equal(al_json_get_int(root, key, "top", 0, 10, true, &i, &err), -EINVAL);
        char want[64];
        snprintf(want, sizeof(want), "top.%s: missing", key);
        assert_string_equal(al_error_message(err), want);
        err = al_error_free(err);
    }

    /* present and good */
    assert_int_equal(al_json_get_int(root, "i", "", 0, 10, true, &i, &err), 0);
    assert_int_equal(i, 7);
    assert_int_equal(al_json_get_bool(root, "b", "", true, &b, &err), 0);
    assert_int_equal(al_json_get_string(root, "s", "", 10, true, al_json_check_line, &s, &err), 0);
    assert_string_equal(s, "a b");
    assert_int_equal(al_json_get_strv(root, "a", "", 2, 10, true, NULL, &v, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(v[0], "x");
    assert_string_equal(v[1], "");
    assert_null(v[2]);
    assert_int_equal(al_json_get_object(root, "o", "", true, &o, &err), 0);
    assert_true(YAJL_IS_OBJECT(o));

    /* wrong type, bounds and checks: errors name the path, *ret untouched */
    static const struct {
        int which;
        const char *key, *want;
    } bad[] = {
            {0, "s", "p.s: expected an integer, got a string"},
            {0, "i", NULL},
            {1, "i", "p.i: expected true or false, got an integer"},
            {2, "o", "p.o: expected a string, got an object"},
            {2, "s", "p.s: contains spaces or control characters"},
            {3, "a", "p.a: expected an object, got an array"},
            {4, "big", "p.big: more than 2 entries"},
            {5, "big", "p.big[0]: expected a string, got an integer"},
            {0, "dup", "p.dup: given more than once"},
    };
    for (size_t k = 0; k < ARRAY_SIZE(bad); k++) {
        int64_t i2 = -1;
        bool b2 = false;
        char *s2 = NULL;
        char **v2 = NULL;
        size_t n2 = 0;
        yajl_val o2 = NULL, a2 = NULL;
        int r = -1;
        switch (bad[k].which) {
        case 0:
            r = al_json_get_int(root, bad[k].key, "p", 0, bad[k].want ? 10 : 5, true, &i2, &err);
            break;
        case 1:
            r = al_json_get_bool(root, bad[k].key, "p", true, &b2, &err);
            break;
        case 2:
            r = al_json_get_string(root, bad[k].key, "p", 10, true, al_json_check_word, &s2, &err);
            break;
        case 3:
            r = al_json_get_object(root, bad[k].key, "p", true, &o2, &err);
            break;
        case 4:
            r = al_json_get_array(root, bad[k].key, "p", 2, true, &a2, &err);
            break;
        case 5:
            r = al_json_get_strv(root, bad[k].key, "p", 5, 10, true, NULL, &v2, &n2, &err);
            break;
        }
        assert_int_equal(r, -EINVAL);
        assert_string_equal(al_error_message(err),
                            bad[k].want ? bad[k].want : "p.i: expected an integer from 0 to 5");
        err = al_error_free(err);
        assert_int_equal(i2, -1);
        assert_false(b2);
        assert_null(s2);
        assert_null(v2);
        assert_null(o2);
        assert_null(a2);
    }
    free(s);
    strv_free(v);
    yajl_tree_free(root);

    assert_int_equal(al_json_parse("{\"a\":", 5, 100, 8, 100, "doc", &root, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "doc is not valid JSON"));
    err = al_error_free(err);
    assert_int_equal(al_json_parse("{\"a\":1}", 7, 6, 8, 100, "doc", &root, &err), -E2BIG);
    err = al_error_free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_hmac_rfc4231),  cmocka_unit_test(test_signature),
            cmocka_unit_test(test_labels),        cmocka_unit_test(test_webhook_examples),
            cmocka_unit_test(test_webhook_parse), cmocka_unit_test(test_rest_answers),
            cmocka_unit_test(test_app_jwt),       cmocka_unit_test(test_secret_files),
            cmocka_unit_test(test_listen),        cmocka_unit_test(test_hook),
            cmocka_unit_test(test_json_getters),  cmocka_unit_test(test_job_wants),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
