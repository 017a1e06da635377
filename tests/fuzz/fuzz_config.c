/* libFuzzer target for the configuration file: the INI reader, the key
 * table and the cross-section validation in runner/engine/config.c.
 *
 * Beyond "no crash, no sanitizer report" it checks the contract: a config
 * or an error with a message, never both; and what config_print writes for
 * an accepted config (`agentlab config show`, which an operator may copy
 * back) loads again into the same printed text, unless a printed line is
 * over libinih's line length (then it is refused for that reason).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runner/engine/config.h"

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

    /* libinih reads lines of at most 198 characters: a value that fitted
     * as "key=value" may not as "key = value", nor a path once "@state" is
     * expanded. Such a print is refused with that reason, nothing else. */
    bool long_line = false;
    for (const char *l = p1; l < p1 + len1;) {
        const char *nl = memchr(l, '\n', (size_t)(p1 + len1 - l));
        size_t n = nl ? (size_t)(nl - l) : (size_t)(p1 + len1 - l);
        long_line |= n > 198;
        l += n + 1;
    }
    struct config *c2 = NULL;
    r = config_load_string(p1, len1, "printed.conf", &c2, &err);
    if (r < 0 && long_line && strstr(err->message, "line longer than")) {
        al_error_free(err);
        free(p1);
        return 0;
    }
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
