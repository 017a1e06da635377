#include "provision/guest/job.h"

#include <string.h>

#include "provision/proto/proto.h"

void guest_job_init(struct guest_job *job)
{
    memset(job, 0, sizeof(*job));
    job->poweroff = true;
}

static void strv_clear(struct guest_strv *s, bool secret)
{
    for (size_t i = 0; i < s->n; i++) {
        if (secret)
            explicit_bzero(s->v[i], strlen(s->v[i]));
        free(s->v[i]);
    }
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

void guest_job_free(struct guest_job *job)
{
    if (!job)
        return;
    free(job->job_id);
    strv_clear(&job->argv, false);
    if (job->script)
        explicit_bzero(job->script, strlen(job->script));
    free(job->script);
    strv_clear(&job->env, false);
    strv_clear(&job->secret, true);
    strv_clear(&job->artifacts, false);
    free(job->user);
    free(job->workdir);
    guest_job_init(job);
}

static const char *tag_name(uint16_t tag)
{
    switch (tag) {
    case AL_TLV_JOB_ID:
        return "JOB_ID";
    case AL_TLV_ARGV:
        return "ARGV";
    case AL_TLV_SCRIPT:
        return "SCRIPT";
    case AL_TLV_ENV:
        return "ENV";
    case AL_TLV_TIMEOUT_S:
        return "TIMEOUT_S";
    case AL_TLV_ARTIFACT:
        return "ARTIFACT";
    case AL_TLV_USER:
        return "USER";
    case AL_TLV_WORKDIR:
        return "WORKDIR";
    case AL_TLV_HAS_WORKDIR:
        return "HAS_WORKDIR";
    case AL_TLV_POWEROFF:
        return "POWEROFF";
    case AL_TLV_MAX_ARTIFACT_BYTES:
        return "MAX_ARTIFACT_BYTES";
    case AL_TLV_SECRET_ENV:
        return "SECRET_ENV";
    default:
        return "?";
    }
}

/* Copies a text value into a new C string. The value of a secret is never
 * quoted in errors, so the messages here name only the tag. */
static int dup_text(uint16_t tag, const uint8_t *val, uint32_t len, char **ret,
                    struct al_error **err)
{
    if (!al_tlv_value_is_text(val, len))
        return al_error_set(err, EINVAL, "%s: value contains a NUL byte", tag_name(tag));
    char *s = malloc((size_t)len + 1);
    if (!s)
        return al_error_set(err, ENOMEM, "%s: out of memory", tag_name(tag));
    if (len)
        memcpy(s, val, len);
    s[len] = '\0';
    *ret = s;
    return 0;
}

static int strv_push(struct guest_strv *s, uint16_t tag, const uint8_t *val, uint32_t len,
                     struct al_error **err)
{
    if (s->n >= GUEST_JOB_MAX_ITEMS)
        return al_error_set(err, E2BIG, "%s: more than %d items", tag_name(tag),
                            GUEST_JOB_MAX_ITEMS);
    char *str = NULL;
    int r = dup_text(tag, val, len, &str, err);
    if (r < 0)
        return r;
    char **v = realloc(s->v, (s->n + 2) * sizeof(*v));
    if (!v) {
        explicit_bzero(str, len);
        free(str);
        return al_error_set(err, ENOMEM, "%s: out of memory", tag_name(tag));
    }
    v[s->n++] = str;
    v[s->n] = NULL;
    s->v = v;
    return 0;
}

/* "NAME=value" with a non-empty name. */
static int check_env_item(uint16_t tag, const uint8_t *val, uint32_t len, struct al_error **err)
{
    const uint8_t *eq = len ? memchr(val, '=', len) : NULL;
    if (!eq || eq == val)
        return al_error_set(err, EINVAL, "%s: item is not NAME=value", tag_name(tag));
    return 0;
}

static int set_single_text(char **slot, uint16_t tag, const uint8_t *val, uint32_t len,
                           struct al_error **err)
{
    if (*slot)
        return al_error_set(err, EINVAL, "%s: given twice", tag_name(tag));
    return dup_text(tag, val, len, slot, err);
}

static int parse_flag(uint16_t tag, const uint8_t *val, uint32_t len, bool *ret,
                      struct al_error **err)
{
    if (len == 1 && (val[0] == '0' || val[0] == '1')) {
        *ret = val[0] == '1';
        return 0;
    }
    return al_error_set(err, EINVAL, "%s: expected 0 or 1", tag_name(tag));
}

static int parse_number(uint16_t tag, const uint8_t *val, uint32_t len, uint64_t max, uint64_t *ret,
                        struct al_error **err)
{
    uint64_t v;
    int r = al_tlv_value_u64(val, len, &v);
    if (r < 0 || v > max)
        return al_error_set(err, r == -EINVAL ? EINVAL : ERANGE,
                            "%s: expected a decimal number up to %llu", tag_name(tag),
                            (unsigned long long)max);
    *ret = v;
    return 0;
}

static int add_secret(struct guest_job *job, const uint8_t *val, uint32_t len,
                      struct al_error **err)
{
    int r = check_env_item(AL_TLV_SECRET_ENV, val, len, err);
    if (r < 0)
        return r;
    return strv_push(&job->secret, AL_TLV_SECRET_ENV, val, len, err);
}

/* One item of a JOB frame; ctx is the bool[64] of the single-valued tags
 * already given. */
static int job_item(struct guest_job *job, uint16_t tag, const uint8_t *val, uint32_t len,
                    void *ctx, struct al_error **err)
{
    bool *seen = ctx;
    int r;
    switch (tag) {
    case AL_TLV_JOB_ID:
        if (len == 0)
            return al_error_set(err, EINVAL, "JOB_ID: empty");
        return set_single_text(&job->job_id, tag, val, len, err);
    case AL_TLV_ARGV:
        return strv_push(&job->argv, tag, val, len, err);
    case AL_TLV_SCRIPT:
        return set_single_text(&job->script, tag, val, len, err);
    case AL_TLV_ENV:
        r = check_env_item(tag, val, len, err);
        if (r < 0)
            return r;
        return strv_push(&job->env, tag, val, len, err);
    case AL_TLV_SECRET_ENV:
        return add_secret(job, val, len, err);
    case AL_TLV_ARTIFACT:
        if (len == 0)
            return al_error_set(err, EINVAL, "ARTIFACT: empty path");
        return strv_push(&job->artifacts, tag, val, len, err);
    case AL_TLV_USER:
        if (len == 0 || memchr(val, '/', len) || memchr(val, ':', len))
            return al_error_set(err, EINVAL, "USER: not a user name");
        return set_single_text(&job->user, tag, val, len, err);
    case AL_TLV_WORKDIR:
        if (len == 0 || val[0] != '/')
            return al_error_set(err, EINVAL, "WORKDIR: not an absolute path");
        return set_single_text(&job->workdir, tag, val, len, err);
    default:
        break;
    }

    /* single-valued scalars */
    if (tag < 64 && seen[tag])
        return al_error_set(err, EINVAL, "%s: given twice", tag_name(tag));
    switch (tag) {
    case AL_TLV_TIMEOUT_S:
        r = parse_number(tag, val, len, GUEST_JOB_MAX_TIMEOUT_S, &job->timeout_s, err);
        break;
    case AL_TLV_HAS_WORKDIR:
        r = parse_flag(tag, val, len, &job->has_workdir, err);
        break;
    case AL_TLV_POWEROFF:
        r = parse_flag(tag, val, len, &job->poweroff, err);
        break;
    case AL_TLV_MAX_ARTIFACT_BYTES:
        r = parse_number(tag, val, len, UINT64_MAX, &job->max_artifact_bytes, err);
        job->has_max_artifact_bytes = r == 0;
        break;
    default:
        return 0; /* unknown tags are skipped: forward compatibility */
    }
    if (r == 0)
        seen[tag] = true;
    return r;
}

/* Hands each TLV of data[0..len) to item; what names the list in messages
 * ("job", "secrets"). Returns 0, or the first failure wrapped with what. */
static int for_each_tlv(struct guest_job *job, const uint8_t *data, size_t len, const char *what,
                        int (*item)(struct guest_job *job, uint16_t tag, const uint8_t *val,
                                    uint32_t len, void *ctx, struct al_error **err),
                        void *ctx, struct al_error **err)
{
    struct al_tlv_iter it;
    al_tlv_iter_init(&it, data, len);
    for (;;) {
        uint16_t tag;
        const uint8_t *val;
        uint32_t vlen;
        int r = al_tlv_next(&it, &tag, &val, &vlen);
        if (r < 0)
            return al_error_set(err, EPROTO, "%s: malformed TLV list", what);
        if (r == 0)
            return 0;
        r = item(job, tag, val, vlen, ctx, err);
        if (r < 0)
            return al_error_wrap(err, "%s", what);
    }
}

int guest_job_parse(struct guest_job *job, const uint8_t *data, size_t len, struct al_error **err)
{
    bool seen[64] = {false};
    int r = for_each_tlv(job, data, len, "job", job_item, seen, err);
    if (r < 0)
        return r;
    if (job->argv.n > 0 && job->script)
        return al_error_set(err, EINVAL, "job: both ARGV and SCRIPT given");
    if (job->argv.n == 0 && !job->script)
        return al_error_set(err, EINVAL, "job: neither ARGV nor SCRIPT given");
    if (job->argv.n > 0 && job->argv.v[0][0] == '\0')
        return al_error_set(err, EINVAL, "job: empty program name");
    return 0;
}

/* SECRETS carries only SECRET_ENV items; others are skipped. */
static int secret_tlv(struct guest_job *job, uint16_t tag, const uint8_t *val, uint32_t len,
                      void *ctx, struct al_error **err)
{
    return tag == AL_TLV_SECRET_ENV ? add_secret(job, val, len, err) : 0;
}

int guest_job_add_secrets(struct guest_job *job, const uint8_t *data, size_t len,
                          struct al_error **err)
{
    return for_each_tlv(job, data, len, "secrets", secret_tlv, NULL, err);
}
