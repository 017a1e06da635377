/* Pools as flavours: the [pool] flavour keys, a source's pools, a proxmox
 * backend's templates, and the one routing rule with its limits. */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/util.h"
#include "runner/engine/config.h"
#include "runner/engine/route.h"
#include "runner/engine/spec.h"

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
    assert_int_equal(r, -EINVAL);
    assert_null(c);
    char *msg = strdup(al_error_message(err));
    al_error_free(err);
    return msg;
}

static void assert_load_fails(const char *text, const char *needle)
{
    char *msg = load_err(text);
    if (!strstr(msg, needle))
        fail_msg("\"%s\" does not contain \"%s\"", msg, needle);
    free(msg);
}

static struct job_spec *spec_of(const char *json)
{
    struct job_spec *s = NULL;
    struct al_error *err = NULL;
    if (job_spec_parse(json, strlen(json), 0, &s, &err) < 0)
        fail_msg("bad spec %s: %s", json, al_error_message(err));
    return s;
}

/* Routes json; returns the pool's name (static) or the error message
 * (caller frees) through *ret_msg. */
static const char *route(const struct config *c, const char *json, char *const *among, char *why,
                         size_t why_size, char **ret_msg)
{
    struct job_spec *s = spec_of(json);
    struct route rt;
    struct al_error *err = NULL;
    int r = route_job(c, s, among, &rt, &err);
    job_spec_free(s);
    if (ret_msg)
        *ret_msg = NULL;
    if (r < 0) {
        assert_int_equal(r, -ROUTE_ENOPOOL);
        if (ret_msg)
            *ret_msg = strdup(al_error_message(err));
        al_error_free(err);
        return NULL;
    }
    if (why)
        snprintf(why, why_size, "%s", rt.why);
    return rt.pool->name;
}

static void test_flavour_keys_and_defaults(void **state)
{
    (void)state;
    struct config *c = load_ok("[agent]\nimage = deb\njob_cpus = 2\njob_memory = 2G\n"
                               "pool = small\n"
                               "[pool \"small\"]\n"
                               "[pool \"big\"]\nimage = deb-actions\ncpus = 4\nmemory = 8G\n"
                               "disk = 40G\nmax_cpus = 8\n"
                               "allowed_images = deb-actions, deb-*, tool?chain\n");
    const struct config_pool *small = config_find_pool(c, "small");
    const struct config_pool *big = config_find_pool(c, "big");
    /* a pool without a size takes [agent]'s and bounds nothing itself */
    assert_string_equal(small->image, "deb");
    assert_int_equal(small->cpus, 2);
    assert_int_equal(small->memory, 2ull << 30);
    assert_int_equal(small->disk, 0);
    assert_int_equal(small->max_cpus, 0);
    assert_int_equal(small->max_memory, 0);
    assert_non_null(small->allowed_images);
    assert_string_equal(small->allowed_images[0], "*");
    assert_null(small->allowed_images[1]);
    assert_true(config_pool_allows_image(small, "deb-12"));
    /* a pool that sets its size is bounded to it unless max_* say more */
    assert_string_equal(big->image, "deb-actions");
    assert_int_equal(big->cpus, 4);
    assert_int_equal(big->memory, 8ull << 30);
    assert_int_equal(big->disk, 40ull << 30);
    assert_int_equal(big->max_cpus, 8);
    assert_int_equal(big->max_memory, 8ull << 30);
    assert_true(config_pool_allows_image(big, "deb-12"));
    assert_true(config_pool_allows_image(big, "tool-chain"));
    assert_false(config_pool_allows_image(big, "alpine"));

    /* config show prints the keys as written, and that reads back the same */
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    assert_int_equal(config_print(c, f), 0);
    fclose(f);
    assert_non_null(strstr(out, "[pool \"small\"]\n"));
    assert_non_null(strstr(out, "max_cpus = 8\n"));
    assert_non_null(strstr(out, "allowed_images = deb-actions, deb-*, tool?chain\n"));
    struct config *again = load_ok(out);
    const struct config_pool *s2 = config_find_pool(again, "small");
    const struct config_pool *b2 = config_find_pool(again, "big");
    assert_int_equal(s2->max_cpus, 0);
    assert_true(config_pool_allows_image(s2, "anything"));
    assert_int_equal(s2->cpus, 2);
    assert_int_equal(b2->max_memory, 8ull << 30);
    assert_int_equal(b2->disk, 40ull << 30);
    free(out);
    config_free(again);
    config_free(c);
}

static void test_flavour_keys_refused(void **state)
{
    (void)state;
    assert_load_fails("[pool \"p\"]\ncpus = 4\nmax_cpus = 2\n",
                      "pool \"p\": max_cpus 2 is less than cpus 4");
    assert_load_fails("[pool \"p\"]\nmemory = 2G\nmax_memory = 1G\n",
                      "pool \"p\": max_memory 1024M is less than memory 2048M");
    assert_load_fails("[pool \"p\"]\nmemory = 64M\n", "memory must be a whole number of MiB");
    assert_load_fails("[pool \"p\"]\ndisk = 1500M\n", "disk must be a whole number of GiB");
    assert_load_fails("[pool \"p\"]\ncpus = 257\n", "bad value \"257\" for key \"cpus\"");
    assert_load_fails("[pool \"p\"]\nimage = a/b\n", "bad value \"a/b\" for key \"image\"");
    assert_load_fails("[pool \"p\"]\nallowed_images = deb/*\n",
                      "bad value \"deb/*\" for key \"allowed_images\"");
    struct config *c = load_ok("[agent]\npool = p\n[pool \"p\"]\nimage = deb\n");
    const struct config_pool *p = config_find_pool(c, "p");
    assert_string_equal(p->allowed_images[0], "deb");
    assert_null(p->allowed_images[1]);
    assert_false(config_pool_allows_image(p, "deb-12"));
    config_free(c);
    assert_load_fails("[pool \"p\"]\nimage = x\nallowed_images = deb-*\n",
                      "its image \"x\" is not among its allowed_images");
}

static void test_source_pools(void **state)
{
    (void)state;
    struct config *c = load_ok("[pool \"a\"]\n[pool \"b\"]\n[pool \"default\"]\n"
                               "[source \"one\"]\npool = a\n"
                               "[source \"two\"]\npools = a, b\n"
                               "[source \"any\"]\n");
    assert_string_equal(c->sources[0].pools[0], "a");
    assert_null(c->sources[0].pools[1]);
    assert_string_equal(c->sources[1].pools[0], "a");
    assert_string_equal(c->sources[1].pools[1], "b");
    assert_string_equal(c->sources[1].pool, "a"); /* the first, for the one-pool callers */
    assert_null(c->sources[2].pools);
    assert_string_equal(c->sources[2].pool, "");
    /* both keys, as config show prints them, read back */
    struct config *again = load_ok("[pool \"a\"]\n[pool \"b\"]\n[pool \"default\"]\n"
                                   "[source \"two\"]\npool = a\npools = a, b\n");
    assert_string_equal(again->sources[0].pools[1], "b");
    config_free(again);
    config_free(c);
    assert_load_fails("[pool \"a\"]\n[pool \"default\"]\n[source \"s\"]\npools = a, ghost\n",
                      "source \"s\" names unknown pool \"ghost\"");
    assert_load_fails("[pool \"a\"]\n[pool \"b\"]\n[pool \"default\"]\n[source \"s\"]\npool = b\n"
                      "pools = a\n",
                      "pool \"b\" is not among its pools");
}

static const char proxmox[] = "[agent]\nimage = deb\n"
                              "[backend \"pve\"]\ntype = proxmox\nurl = https://127.0.0.1:8006\n"
                              "token_file = /t\ntemplate = 9000\n";

static void test_proxmox_templates(void **state)
{
    (void)state;
    char text[512];
    snprintf(text, sizeof(text), "%stemplates = deb-actions:9001, tool:120\n", proxmox);
    struct config *c = load_ok(text);
    const struct backend_settings *b = config_find_backend(c, "pve");
    char buf[32];
    assert_string_equal(config_backend_template(c, b, "deb-actions", buf, sizeof(buf)), "9001");
    assert_string_equal(config_backend_template(c, b, "tool", buf, sizeof(buf)), "120");
    /* template stays the template of the default image */
    assert_string_equal(config_backend_template(c, b, "deb", buf, sizeof(buf)), "9000");
    assert_null(config_backend_template(c, b, "alpine", buf, sizeof(buf)));
    config_free(c);

    snprintf(text, sizeof(text), "%stemplates = deb-actions\n", proxmox);
    assert_load_fails(text, "bad value \"deb-actions\" for key \"templates\"");
    snprintf(text, sizeof(text), "%stemplates = deb-actions:12\n", proxmox);
    assert_load_fails(text, "for key \"templates\"");
    snprintf(text, sizeof(text), "%stemplates = a:9001, a:9002\n", proxmox);
    assert_load_fails(text, "backend \"pve\" names two templates for image \"a\"");
    assert_load_fails("[backend \"l\"]\ntemplates = a:9001\n",
                      "key \"templates\" does not apply to backend type libvirt");
}

static const char pools_conf[] = "[pool \"default\"]\n"
                                 "[pool \"big\"]\nlabels = big\n"
                                 "[pool \"gpu\"]\nlabels = big, gpu\n"
                                 "[pool \"big2\"]\nlabels = big\n"
                                 "[pool \"arm\"]\nlabels = arm\n"
                                 "[pool \"spare\"]\n";

static void test_route_rule(void **state)
{
    (void)state;
    struct config *c = load_ok(pools_conf);
    char why[ROUTE_WHY_SIZE];
    char *msg;
    /* no labels: the catch-alls match, and the default pool wins among them */
    assert_string_equal(route(c, "{\"script\":\"x\"}", NULL, why, sizeof(why), NULL), "default");
    assert_string_equal(why, "default pool");
    /* big matches big and big2 (a tie: the first in the file) and the
     * catch-alls, which have fewer labels */
    assert_string_equal(
            route(c, "{\"script\":\"x\",\"labels\":[\"big\"]}", NULL, why, sizeof(why), NULL),
            "big");
    assert_string_equal(why, "labels big matched pool big");
    /* the most specific pool wins, whatever else the job carries */
    assert_string_equal(route(c, "{\"script\":\"x\",\"labels\":[\"x\",\"gpu\",\"big\"]}", NULL, why,
                              sizeof(why), NULL),
                        "gpu");
    assert_string_equal(why, "labels big,gpu matched pool gpu");
    /* gpu alone is not all of gpu's labels: only the catch-alls match */
    assert_string_equal(route(c, "{\"script\":\"x\",\"labels\":[\"gpu\"]}", NULL, NULL, 0, NULL),
                        "default");
    /* a named pool wins over labels */
    assert_string_equal(route(c, "{\"script\":\"x\",\"labels\":[\"big\"],\"pool\":\"arm\"}", NULL,
                              why, sizeof(why), NULL),
                        "arm");
    assert_string_equal(why, "named by the job");
    assert_null(route(c, "{\"script\":\"x\",\"pool\":\"nope\"}", NULL, NULL, 0, &msg));
    assert_string_equal(
            msg, "pool: no pool named \"nope\" (pools: default, big, gpu, big2, arm, spare)");
    free(msg);

    /* a source's pools restrict the candidates */
    char *arm_only[] = {"big", "arm", NULL};
    assert_string_equal(route(c, "{\"script\":\"x\",\"labels\":[\"arm\",\"big\"]}", arm_only, why,
                              sizeof(why), NULL),
                        "big");
    assert_null(route(c, "{\"script\":\"x\",\"labels\":[\"x\"]}", arm_only, NULL, 0, &msg));
    assert_string_equal(msg, "no pool takes a job with labels x (pools and the labels they "
                             "need: big: big; arm: arm)");
    free(msg);
    assert_null(route(c, "{\"script\":\"x\",\"pool\":\"gpu\"}", arm_only, NULL, 0, &msg));
    assert_non_null(strstr(msg, "\"gpu\" is not among the pools this source serves"));
    free(msg);
    /* a source of one pool sends every job there */
    char *one[] = {"arm", NULL};
    assert_string_equal(
            route(c, "{\"script\":\"x\",\"labels\":[\"big\"]}", one, why, sizeof(why), NULL),
            "arm");
    assert_string_equal(why, "the source's pool");
    config_free(c);
}

static void test_route_catch_all_and_no_match(void **state)
{
    (void)state;
    /* the default pool carries labels: jobs without them find no pool */
    struct config *c = load_ok("[agent]\npool = small\n"
                               "[pool \"small\"]\nlabels = small\n"
                               "[pool \"big\"]\nlabels = big, x86\n");
    char *msg;
    assert_null(route(c, "{\"script\":\"x\",\"labels\":[\"arm\",\"big\"]}", NULL, NULL, 0, &msg));
    assert_string_equal(msg, "no pool takes a job with labels arm,big (pools and the labels they "
                             "need: small: small; big: big,x86)");
    free(msg);
    assert_null(route(c, "{\"script\":\"x\"}", NULL, NULL, 0, &msg));
    assert_non_null(strstr(msg, "no pool takes a job with labels none"));
    free(msg);
    config_free(c);
    /* a catch-all that is not the default pool: the first in the file */
    c = load_ok("[agent]\npool = big\n[pool \"big\"]\nlabels = big\n[pool \"any\"]\n"
                "[pool \"other\"]\n");
    char why[ROUTE_WHY_SIZE];
    assert_string_equal(
            route(c, "{\"script\":\"x\",\"labels\":[\"q\"]}", NULL, why, sizeof(why), NULL), "any");
    assert_string_equal(why, "no labels needed (catch-all pool)");
    config_free(c);
}

/* Applies the pool's flavour; returns 0 or the error message through *msg. */
static int apply(const struct config_pool *p, const char *json, struct job_spec **ret,
                 char **ret_msg)
{
    struct job_spec *s = spec_of(json);
    struct al_error *err = NULL;
    int r = route_apply_pool(p, s, &err);
    *ret_msg = r < 0 ? strdup(al_error_message(err)) : NULL;
    al_error_free(err);
    if (r < 0 || !ret)
        job_spec_free(s);
    else
        *ret = s;
    return r;
}

static void test_limits(void **state)
{
    (void)state;
    struct config *c = load_ok("[agent]\npool = small\n"
                               "[pool \"small\"]\nimage = deb\ncpus = 1\nmemory = 512M\n"
                               "[pool \"big\"]\nimage = deb\nlabels = big\ncpus = 2\n"
                               "memory = 1536M\ndisk = 20G\nmax_memory = 4G\n"
                               "allowed_images = deb, deb-*\n"
                               "[pool \"open\"]\n");
    const struct config_pool *small = config_find_pool(c, "small");
    const struct config_pool *big = config_find_pool(c, "big");
    struct job_spec *s = NULL;
    char *msg;
    /* nothing asked: the pool's flavour */
    assert_int_equal(apply(big, "{\"script\":\"x\"}", &s, &msg), 0);
    assert_string_equal(s->image, "deb");
    assert_int_equal(s->resources.cpus, 2);
    assert_int_equal(s->resources.memory_mb, 1536);
    assert_int_equal(s->resources.disk_gb, 20);
    job_spec_free(s);
    /* less, and more within the limits, as asked */
    assert_int_equal(apply(big,
                           "{\"script\":\"x\",\"image\":\"deb-13\",\"resources\":{\"cpus\":1,"
                           "\"memory_mb\":4096,\"disk_gb\":30}}",
                           &s, &msg),
                     0);
    assert_string_equal(s->image, "deb-13");
    assert_int_equal(s->resources.cpus, 1);
    assert_int_equal(s->resources.memory_mb, 4096);
    assert_int_equal(s->resources.disk_gb, 30);
    job_spec_free(s);
    /* beyond: refused naming the limit, never cut down */
    assert_int_equal(apply(big, "{\"script\":\"x\",\"resources\":{\"cpus\":4}}", NULL, &msg),
                     -EINVAL);
    assert_string_equal(msg, "resources.cpus: 4 exceeds pool \"big\"'s max_cpus 2");
    free(msg);
    assert_int_equal(
            apply(big, "{\"script\":\"x\",\"resources\":{\"memory_mb\":4097}}", NULL, &msg),
            -EINVAL);
    assert_string_equal(msg,
                        "resources.memory_mb: 4097 exceeds pool \"big\"'s max_memory 4096 MiB");
    free(msg);
    assert_int_equal(
            apply(small, "{\"script\":\"x\",\"resources\":{\"memory_mb\":1024}}", NULL, &msg),
            -EINVAL);
    assert_string_equal(msg,
                        "resources.memory_mb: 1024 exceeds pool \"small\"'s max_memory 512 MiB");
    free(msg);
    assert_int_equal(apply(big, "{\"script\":\"x\",\"image\":\"alpine\"}", NULL, &msg), -EINVAL);
    assert_string_equal(msg, "image: \"alpine\" is not among pool \"big\"'s allowed_images "
                             "(deb,deb-*)");
    free(msg);
    assert_int_equal(apply(small, "{\"script\":\"x\",\"image\":\"deb-13\"}", NULL, &msg), -EINVAL);
    free(msg);
    /* a pool with [agent]'s size leaves the size to the backends */
    assert_int_equal(apply(config_find_pool(c, "open"),
                           "{\"script\":\"x\",\"resources\":{\"cpus\":16,\"memory_mb\":65536}}", &s,
                           &msg),
                     0);
    assert_int_equal(s->resources.cpus, 16);
    job_spec_free(s);
    config_free(c);
}

/* pool_reason is the engine's: stored specs keep it, submitted ones may not set it. */
static void test_pool_reason_is_stored_only(void **state)
{
    (void)state;
    const char *json = "{\"script\":\"x\",\"pool\":\"big\",\"pool_reason\":\"named by the job\"}";
    struct job_spec *s = NULL;
    struct al_error *err = NULL;
    assert_int_equal(job_spec_parse(json, strlen(json), 0, &s, &err), -EINVAL);
    assert_non_null(strstr(al_error_message(err), "pool_reason"));
    al_error_free(err);
    assert_int_equal(job_spec_parse(json, strlen(json), JOB_SPEC_PARSE_STORED, &s, NULL), 0);
    assert_string_equal(s->pool_reason, "named by the job");
    char *out = NULL;
    assert_int_equal(job_spec_to_json(s, &out, NULL, NULL), 0);
    assert_non_null(strstr(out, "\"pool_reason\":\"named by the job\""));
    free(out);
    job_spec_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test_setup(test_flavour_keys_and_defaults, setup),
            cmocka_unit_test_setup(test_flavour_keys_refused, setup),
            cmocka_unit_test_setup(test_source_pools, setup),
            cmocka_unit_test_setup(test_proxmox_templates, setup),
            cmocka_unit_test_setup(test_route_rule, setup),
            cmocka_unit_test_setup(test_route_catch_all_and_no_match, setup),
            cmocka_unit_test_setup(test_limits, setup),
            cmocka_unit_test_setup(test_pool_reason_is_stored_only, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
