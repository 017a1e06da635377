/* The Proxmox client's edges: percent- and form-encoding, credentials and
 * fingerprint parsing, reply parsing with Proxmox's reasons, the lock-timeout
 * classifier, JSON helpers for Proxmox's loose types, UPIDs, base64. */
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/base/base64.h"
#include "runner/base/log.h"
#include "provision/pve_api.h"
#include "provision/pve_task.h"

static void test_percent_encode(void **state)
{
    (void)state;
    struct al_buf b = AL_BUF_INIT;
    const char in[] = "a b+c=d;e&f/~._-\xc3\xa9";
    assert_int_equal(pve_percent_encode(&b, in, strlen(in)), 0);
    assert_string_equal(b.data, "a%20b%2Bc%3Dd%3Be%26f%2F~._-%C3%A9");
    al_buf_free(&b);
}

static void test_params(void **state)
{
    (void)state;
    struct pve_params p = {0};
    pve_params_add(&p, "command", "/bin/sh");
    pve_params_add(&p, "command", "-c");
    pve_params_add_bool(&p, "full", true);
    pve_params_add_bool(&p, "purge", false);
    pve_params_add_int(&p, "newid", 123);
    pve_params_add(&p, "tags", "agentlab;agentlab-job.j1");
    assert_int_equal(p.error, 0);
    assert_string_equal(p.buf.data, "command=%2Fbin%2Fsh&command=-c&full=1&purge=0&newid=123&"
                                    "tags=agentlab%3Bagentlab-job.j1");
    pve_params_clear(&p);
    /* sshkeys: strictly percent-encoded first, then form-encoded again */
    struct al_buf once = AL_BUF_INIT;
    const char key[] = "ssh-ed25519 AAAA+x/y= me@host\n";
    assert_int_equal(pve_percent_encode(&once, key, strlen(key)), 0);
    pve_params_add(&p, "sshkeys", once.data);
    assert_string_equal(p.buf.data,
                        "sshkeys=ssh-ed25519%2520AAAA%252Bx%252Fy%253D%2520me%2540host%250A");
    pve_params_clear(&p);
    al_buf_free(&once);
    /* an empty value is still a pair */
    pve_params_add(&p, "delete", "");
    assert_string_equal(p.buf.data, "delete=");
    pve_params_clear(&p);
}

static void test_path_segment(void **state)
{
    (void)state;
    struct al_buf b = AL_BUF_INIT;
    assert_int_equal(pve_path_segment(&b, "UPID:pve1:0001:0002:0003:qmclone:9000:root@pam!tok:"),
                     0);
    assert_string_equal(b.data,
                        "/UPID%3Apve1%3A0001%3A0002%3A0003%3Aqmclone%3A9000%3Aroot%40pam%21tok%3A");
    al_buf_free(&b);
}

static void test_fingerprint(void **state)
{
    (void)state;
    uint8_t fp[32];
    const char *ok = "B7:83:9E:E2:14:84:5D:11:7D:A9:06:23:7B:9D:C2:A2:2D:DA:B7:D7:DC:4C:B0:FF:"
                     "76:F8:08:53:C9:76:01:32";
    assert_int_equal(pve_fingerprint_parse(ok, fp), 0);
    assert_int_equal(fp[0], 0xB7);
    assert_int_equal(fp[31], 0x32);
    assert_int_equal(
            pve_fingerprint_parse(
                    "b7839ee214845d117da906237b9dc2a22ddab7d7dc4cb0ff76f80853c9760132", fp),
            0);
    assert_int_equal(fp[1], 0x83);
    assert_int_equal(pve_fingerprint_parse("B7:83", fp), -EINVAL);    /* short */
    assert_int_equal(pve_fingerprint_parse("B7:8", fp), -EINVAL);     /* odd */
    assert_int_equal(pve_fingerprint_parse("ZZ:83:9E", fp), -EINVAL); /* not hex */
    assert_int_equal(pve_fingerprint_parse("sha256 Fingerprint=B7", fp), -EINVAL);
}

static void test_token(void **state)
{
    (void)state;
    char *tok = NULL;
    const char *secret = NULL;
    struct al_error *err = NULL;
    assert_int_equal(pve_token_parse("  root@pam!ci=0a1b2c3d-4e5f\n", &tok, &secret, &err), 0);
    assert_string_equal(tok, "root@pam!ci=0a1b2c3d-4e5f");
    assert_string_equal(secret, "0a1b2c3d-4e5f");
    free(tok);
    const char *bad[] = {"root@pam=abc",        "root!ci=secret", "@pam!ci=secret",
                         "root@pam!=secret",    "root@pam!ci=",   "root@pam!ci=ab",
                         "root@pam!ci=a b c d", "x\x01@y!z=wxyz"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        assert_int_not_equal(pve_token_parse(bad[i], &tok, &secret, &err), 0);
        assert_non_null(err);
        /* the message never repeats the file's content */
        assert_null(strstr(al_error_message(err), bad[i]));
        err = al_error_free(err);
    }
}

static void test_reply_ok(void **state)
{
    (void)state;
    yajl_val tree = NULL, data = NULL;
    char msg[PVE_MESSAGE_MAX];
    const char body[] = "{\"data\":\"UPID:pve1:00000001:00000002:00000003:qmstart:100:root@pam:\"}";
    assert_int_equal(pve_reply_parse(200, "OK", body, strlen(body), &tree, &data, msg, sizeof(msg)),
                     0);
    assert_true(YAJL_IS_STRING(data));
    yajl_tree_free(tree);
    const char null_body[] = "{\"data\":null}";
    assert_int_equal(pve_reply_parse(200, "OK", null_body, strlen(null_body), &tree, &data, msg,
                                     sizeof(msg)),
                     0);
    assert_null(data);
    yajl_tree_free(tree);
    /* malformed success replies are errors, not crashes */
    const char *bad[] = {"", "[1,2]", "{\"nodata\":1}", "{\"data\":", "<html>"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        assert_int_equal(
                pve_reply_parse(200, "OK", bad[i], strlen(bad[i]), &tree, &data, msg, sizeof(msg)),
                -EPROTO);
    /* nesting beyond the limit is refused before yajl sees it */
    char deep[200];
    size_t n = 0;
    n += (size_t)snprintf(deep, sizeof(deep), "{\"data\":");
    for (int i = 0; i < PVE_MAX_JSON_DEPTH + 5; i++)
        deep[n++] = '[';
    for (int i = 0; i < PVE_MAX_JSON_DEPTH + 5; i++)
        deep[n++] = ']';
    deep[n++] = '}';
    deep[n] = '\0';
    assert_int_equal(pve_reply_parse(200, "OK", deep, n, &tree, &data, msg, sizeof(msg)), -EPROTO);
    /* an embedded NUL is not JSON */
    const char nul[] = "{\"data\":\"a\0b\"}";
    assert_int_equal(
            pve_reply_parse(200, "OK", nul, sizeof(nul) - 1, &tree, &data, msg, sizeof(msg)),
            -EPROTO);
}

static void test_reply_errors(void **state)
{
    (void)state;
    yajl_val tree = NULL, data = NULL;
    char msg[PVE_MESSAGE_MAX];
    /* 500: the reason in the status line, and the same again in message */
    const char b500[] = "{\"data\":null,\"message\":\"VM is locked (clone)\\n\"}";
    assert_int_equal(pve_reply_parse(500, "VM is locked (clone)", b500, strlen(b500), &tree, &data,
                                     msg, sizeof(msg)),
                     0);
    assert_string_equal(msg, "VM is locked (clone)");
    /* a message that says more than the status line */
    const char bmore[] = "{\"data\":null,\"message\":\"unable to create VM 123: config file "
                         "already exists\\n\"}";
    assert_int_equal(pve_reply_parse(500, "Internal Server Error", bmore, strlen(bmore), &tree,
                                     &data, msg, sizeof(msg)),
                     0);
    assert_string_equal(
            msg, "Internal Server Error: unable to create VM 123: config file already exists");
    /* 400: parameter errors */
    const char b400[] = "{\"data\":null,\"errors\":{\"newid\":\"VM 123 already exists\",\"full\":"
                        "\"invalid\\u0001\"}}";
    assert_int_equal(pve_reply_parse(400, "Parameter verification failed.", b400, strlen(b400),
                                     &tree, &data, msg, sizeof(msg)),
                     0);
    assert_string_equal(msg, "Parameter verification failed. (newid: VM 123 already exists; "
                             "full: invalid )");
    /* 401: empty body */
    assert_int_equal(
            pve_reply_parse(401, "authentication failure", "", 0, &tree, &data, msg, sizeof(msg)),
            0);
    assert_string_equal(msg, "authentication failure");
    assert_int_equal(pve_reply_parse(502, "", "", 0, &tree, &data, msg, sizeof(msg)), 0);
    assert_string_equal(msg, "no reason given");
    /* control characters from the server do not reach our messages */
    assert_int_equal(pve_reply_parse(500, "bad\r\nthing", "", 0, &tree, &data, msg, sizeof(msg)),
                     0);
    assert_null(strchr(msg, '\n'));
}

static void test_lock_timeout(void **state)
{
    (void)state;
    assert_true(pve_message_is_lock_timeout(
            "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout"));
    assert_true(pve_message_is_lock_timeout("VM is locked (clone)"));
    assert_true(pve_message_is_lock_timeout("cfs-lock 'file-user_cfg' error: got lock request "
                                            "timeout"));
    assert_false(pve_message_is_lock_timeout("VM 100 already running"));
    assert_false(pve_message_is_lock_timeout("QEMU guest agent is not running"));
}

static void test_json_helpers(void **state)
{
    (void)state;
    char ebuf[64];
    yajl_val v = yajl_tree_parse("{\"a\":\"42\",\"b\":7,\"c\":1,\"d\":true,\"e\":\"x\",\"f\":2.0,"
                                 "\"g\":0}",
                                 ebuf, sizeof(ebuf));
    assert_non_null(v);
    int64_t i;
    bool b;
    assert_true(pve_json_int(v, "a", &i));
    assert_int_equal(i, 42);
    assert_true(pve_json_int(v, "b", &i));
    assert_int_equal(i, 7);
    assert_true(pve_json_int(v, "f", &i));
    assert_int_equal(i, 2);
    assert_false(pve_json_int(v, "e", &i));
    assert_false(pve_json_int(v, "zz", &i));
    assert_true(pve_json_bool(v, "c", &b));
    assert_true(b);
    assert_true(pve_json_bool(v, "d", &b));
    assert_true(b);
    assert_true(pve_json_bool(v, "g", &b));
    assert_false(b);
    assert_false(pve_json_bool(v, "b", &b)); /* 7 is no boolean */
    assert_string_equal(pve_json_str(v, "e"), "x");
    assert_null(pve_json_str(v, "b"));
    assert_null(pve_json_get(NULL, "a"));
    yajl_tree_free(v);
}

static void test_upid(void **state)
{
    (void)state;
    struct pve_upid u;
    assert_int_equal(
            pve_upid_parse("UPID:pve-2:0000A1B2:00C3D4E5:6553F00D:qmclone:9000:root@pam!ci:", &u),
            0);
    assert_string_equal(u.node, "pve-2");
    assert_string_equal(u.type, "qmclone");
    assert_string_equal(u.id, "9000");
    assert_int_equal(pve_upid_parse("UPID:pve1:1:2:3:vzdump::root@pam:", &u), 0);
    assert_string_equal(u.id, "");
    const char *bad[] = {"",
                         "UPID:",
                         "UPID:pve1:1:2:3:qmstart:100:root@pam",
                         "UPID:pve1:1:2:3:qmstart:100:root@pam:extra",
                         "TASK:pve1:1:2:3:a:b:c:",
                         "UPID::1:2:3:qmstart:100:root@pam:",
                         "UPID:../x:1:2:3:qmstart:100:u:"};
    for (size_t k = 0; k < ARRAY_SIZE(bad); k++)
        assert_int_equal(pve_upid_parse(bad[k], &u), -EINVAL);
}

static void test_base64(void **state)
{
    (void)state;
    struct al_buf b = AL_BUF_INIT, d = AL_BUF_INIT;
    for (size_t n = 0; n < 40; n++) {
        uint8_t raw[40];
        for (size_t k = 0; k < n; k++)
            raw[k] = (uint8_t)(k * 37 + n);
        al_buf_reset(&b);
        al_buf_reset(&d);
        assert_int_equal(al_base64_encode(&b, raw, n), 0);
        assert_int_equal(b.len, al_base64_encoded_len(n));
        assert_int_equal(al_base64_decode(&d, b.data ? b.data : "", b.len), 0);
        assert_int_equal(d.len, n);
        if (n)
            assert_memory_equal(d.data, raw, n);
    }
    al_buf_reset(&b);
    assert_int_equal(al_base64_encode(&b, "foobar", 6), 0);
    assert_string_equal(b.data, "Zm9vYmFy");
    const char *bad[] = {"Zm9", "Zm9v\n", "Zm=v", "Z===", "Zg==Zg==", "Zm9v YmFy", "Zh=="};
    for (size_t k = 0; k < ARRAY_SIZE(bad) - 1; k++) {
        al_buf_reset(&d);
        assert_int_equal(al_base64_decode(&d, bad[k], strlen(bad[k])), -EINVAL);
    }
    al_buf_free(&b);
    al_buf_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_percent_encode), cmocka_unit_test(test_params),
            cmocka_unit_test(test_path_segment),   cmocka_unit_test(test_fingerprint),
            cmocka_unit_test(test_token),          cmocka_unit_test(test_reply_ok),
            cmocka_unit_test(test_reply_errors),   cmocka_unit_test(test_lock_timeout),
            cmocka_unit_test(test_json_helpers),   cmocka_unit_test(test_upid),
            cmocka_unit_test(test_base64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
