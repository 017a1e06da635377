/* libFuzzer target for the configuration file: the INI reader, the key
 * table and the cross-section validation in runner/config.c.
 *
 * Beyond "no crash, no sanitizer report" it checks the contract: a config
 * or an error with a message, never both; and what config_print writes for
 * an accepted config (the `agentlabd --print-config` output an operator
 * copies back) loads again into the same printed text.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond)
{
    if (!cond)
        abort();
}

/* config_print into a malloc'ed string, or NULL. */
static char *print(const struct config *c, size_t *ret_len)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    check(f != NULL);
    int r = config_print(c, f);
    check(fclose(f) == 0);
    check(r == 0);
    *ret_len = len;
    return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > AL_CONFIG_MAX_BYTES)
        return 0;
    struct config *c = NULL;
    struct al_error *err = NULL;
    int r = config_load_string((const char *)data, size, "fuzz.conf", &c, &err);
    if (r < 0) {
        check(c == NULL && err && err->message && err->message[0]);
        check(r == -EINVAL || r == -ENOMEM);
        al_error_free(err);
        return 0;
    }
    check(r == 0 && c && !err);
    size_t len1 = 0;
    char *p1 = print(c, &len1);
    config_free(c);

    struct config *c2 = NULL;
    r = config_load_string(p1, len1, "printed.conf", &c2, &err);
    if (r < 0) {
        fprintf(stderr, "the printed config does not load: %s\n%s\n", al_error_message(err), p1);
        abort();
    }
    size_t len2 = 0;
    char *p2 = print(c2, &len2);
    config_free(c2);
    if (len1 != len2 || memcmp(p1, p2, len1) != 0) {
        fprintf(stderr, "printing is not stable:\n%s\n---\n%s\n", p1, p2);
        abort();
    }
    free(p1);
    free(p2);
    return 0;
}
