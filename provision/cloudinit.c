#include "provision/cloudinit.h"

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "provision/proto/proto.h"
#include "runner/base/buf.h"
#include "runner/base/utf8.h"

/* Limits on what a caller may put into user-data. The job blob is bounded by
 * the protocol's payload limit so the same job could also travel as a JOB
 * frame; keys and paths are bounded to keep a bad caller from producing a
 * document cloud-init would choke on. */
#define MAX_INSTANCE_ID_LEN 128
#define MAX_HOSTNAME_LEN    63
#define MAX_SSH_KEYS        64
#define MAX_SSH_KEY_LEN     16384

static const char b64_alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int append_base64(struct al_buf *b, const uint8_t *p, size_t n)
{
    char out[4];
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[0] = b64_alphabet[(v >> 18) & 63];
        out[1] = b64_alphabet[(v >> 12) & 63];
        out[2] = b64_alphabet[(v >> 6) & 63];
        out[3] = b64_alphabet[v & 63];
        int r = al_buf_append(b, out, 4);
        if (r < 0)
            return r;
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        out[0] = b64_alphabet[(v >> 18) & 63];
        out[1] = b64_alphabet[(v >> 12) & 63];
        out[2] = i + 1 < n ? b64_alphabet[(v >> 6) & 63] : '=';
        out[3] = '=';
        return al_buf_append(b, out, 4);
    }
    return 0;
}

/* Characters that may appear literally in a double-quoted scalar: YAML's
 * printable set minus what a YAML 1.1 parser (PyYAML, so cloud-init) folds
 * as a line break (NEL, U+2028, U+2029) and the byte order mark. */
static bool yaml_literal_ok(uint32_t cp)
{
    if (cp == 0x2028 || cp == 0x2029 || cp == 0xfeff)
        return false;
    return (cp >= 0x20 && cp <= 0x7e) || (cp >= 0xa0 && cp <= 0xd7ff) ||
           (cp >= 0xe000 && cp <= 0xfffd) || (cp >= 0x10000 && cp <= 0x10ffff);
}

/* Appends s as a YAML double-quoted scalar. Every string we emit goes through
 * here, so no caller-supplied byte can end the scalar, start a new key or
 * change the document's structure. Returns -EILSEQ for invalid UTF-8. */
static int append_yaml_quoted(struct al_buf *b, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    int r = al_buf_append(b, "\"", 1);
    while (r == 0 && n > 0) {
        uint32_t cp;
        size_t len = al_utf8_decode(p, n, &cp);
        if (len == 0)
            return -EILSEQ;
        if (cp == '"')
            r = al_buf_puts(b, "\\\"");
        else if (cp == '\\')
            r = al_buf_puts(b, "\\\\");
        else if (yaml_literal_ok(cp))
            r = al_buf_append(b, p, len);
        else if (cp <= 0xff)
            r = al_buf_printf(b, "\\x%02x", (unsigned)cp);
        else
            r = al_buf_printf(b, "\\u%04x", (unsigned)cp);
        p += len;
        n -= len;
    }
    if (r == 0)
        r = al_buf_append(b, "\"", 1);
    return r;
}

static bool is_alnum_ascii(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* cloud-init names a directory after the instance id
 * (/var/lib/cloud/instances/<id>), so it must be a safe file name. */
static int check_instance_id(const char *id, struct al_error **err)
{
    if (!id || !*id)
        return al_error_set(err, EINVAL, "cloud-init: the instance id (job id) is empty");
    size_t n = strlen(id);
    if (n > MAX_INSTANCE_ID_LEN)
        return al_error_set(err, EINVAL, "cloud-init: instance id is %zu characters (at most %d)",
                            n, MAX_INSTANCE_ID_LEN);
    if (id[0] == '.' || id[0] == '-')
        return al_error_set(err, EINVAL, "cloud-init: instance id must not start with '.' or '-'");
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!is_alnum_ascii(c) && c != '-' && c != '_' && c != '.')
            return al_error_set(err, EINVAL,
                                "cloud-init: invalid character 0x%02x in instance id at offset "
                                "%zu (allowed: A-Z a-z 0-9 . _ -)",
                                (unsigned char)c, i);
    }
    return 0;
}

/* RFC 1123 host name: dot-separated labels of letters, digits and hyphens,
 * no label empty or starting/ending with a hyphen; at most 63 characters in
 * all so it fits the kernel's HOST_NAME_MAX with room to spare. */
static int check_hostname(const char *h, struct al_error **err)
{
    if (!h || !*h)
        return al_error_set(err, EINVAL, "cloud-init: the hostname is empty");
    size_t n = strlen(h);
    if (n > MAX_HOSTNAME_LEN)
        return al_error_set(err, EINVAL, "cloud-init: hostname is %zu characters (at most %d)", n,
                            MAX_HOSTNAME_LEN);
    size_t label_start = 0;
    for (size_t i = 0; i <= n; i++) {
        char c = h[i];
        if (c == '.' || c == '\0') {
            if (i == label_start)
                return al_error_set(err, EINVAL,
                                    "cloud-init: invalid hostname: empty label at offset %zu", i);
            if (h[label_start] == '-' || h[i - 1] == '-')
                return al_error_set(err, EINVAL,
                                    "cloud-init: invalid hostname: a label starts or ends with "
                                    "'-'");
            label_start = i + 1;
            continue;
        }
        if (!is_alnum_ascii(c) && c != '-')
            return al_error_set(err, EINVAL,
                                "cloud-init: invalid character 0x%02x in hostname at offset %zu "
                                "(allowed: letters, digits, '-', '.')",
                                (unsigned char)c, i);
    }
    return 0;
}

static int check_helper_path(const char *path, struct al_error **err)
{
    if (path[0] != '/')
        return al_error_set(err, EINVAL, "cloud-init: helper path must be absolute");
    size_t n = strlen(path);
    if (n >= PATH_MAX)
        return al_error_set(err, ENAMETOOLONG, "cloud-init: helper path is too long");
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)path[i] < 0x20 || path[i] == 0x7f)
            return al_error_set(err, EINVAL,
                                "cloud-init: control character in helper path at offset %zu", i);
    return 0;
}

static bool starts_with(const char *s, size_t n, const char *prefix)
{
    size_t k = strlen(prefix);
    return n >= k && memcmp(s, prefix, k) == 0;
}

/* One authorized_keys line: cloud-init writes it verbatim, so a line break
 * would smuggle in a second key. It must name a known key type somewhere
 * (options such as `no-pty` may come first). */
static int check_ssh_key(const char *key, size_t index, struct al_error **err)
{
    size_t n = strlen(key);
    if (n == 0)
        return al_error_set(err, EINVAL, "cloud-init: ssh authorized key #%zu is empty", index);
    if (n > MAX_SSH_KEY_LEN)
        return al_error_set(err, EINVAL,
                            "cloud-init: ssh authorized key #%zu is %zu bytes (at most %d)", index,
                            n, MAX_SSH_KEY_LEN);
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)key[i] < 0x20 && key[i] != '\t') || key[i] == 0x7f)
            return al_error_set(err, EINVAL,
                                "cloud-init: ssh authorized key #%zu contains a control character "
                                "(one key per entry, no line breaks)",
                                index);
    bool typed = false;
    for (size_t i = 0; i < n && !typed; i++) {
        if (i > 0 && key[i - 1] != ' ' && key[i - 1] != '\t')
            continue;
        const char *tok = key + i;
        size_t left = n - i;
        typed = starts_with(tok, left, "ssh-") || starts_with(tok, left, "ecdsa-sha2-") ||
                starts_with(tok, left, "sk-ssh-") || starts_with(tok, left, "sk-ecdsa-sha2-");
    }
    if (!typed)
        return al_error_set(err, EINVAL,
                            "cloud-init: ssh authorized key #%zu has no key type (ssh-ed25519, "
                            "ssh-rsa, ecdsa-sha2-..., sk-...)",
                            index);
    return 0;
}

static int render_meta_data(const struct cloudinit_job *job, char **ret)
{
    _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
    int r = al_buf_puts(&b, "instance-id: ");
    if (r == 0)
        r = append_yaml_quoted(&b, job->instance_id);
    if (r == 0)
        r = al_buf_puts(&b, "\nlocal-hostname: ");
    if (r == 0)
        r = append_yaml_quoted(&b, job->hostname);
    /* The job VM has no network: let cloud-init apply everything in its
     * local stage instead of waiting for the network stage. */
    if (r == 0)
        r = al_buf_puts(&b, "\ndsmode: \"local\"\n");
    if (r < 0)
        return r;
    *ret = al_buf_steal(&b);
    return *ret ? 0 : -ENOMEM;
}

/* The fixed part. Why each setting:
 * - packages: a throwaway VM without network must not try apt.
 * - locale "false" (a string, which the 22.4 schema requires) skips
 *   cc_locale: minimal images lack the locales package and locale-gen is
 *   slow under TCG.
 * - growpart/resize_rootfs off: the overlay has the golden image's size.
 * - ssh: keep host keys, fingerprints and keys off the serial console and
 *   out of the datasource. */
static const char user_data_settings[] = "preserve_hostname: false\n"
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
                                         "no_ssh_fingerprints: true\n";

/* Without authorized keys nobody logs in over ssh: an empty ssh_keys makes
 * cc_ssh skip host key generation (its documented behaviour; an empty
 * ssh_genkeytypes would do the same but fails the schema), and ssh_pwauth
 * stays unset because setting it makes cloud-init query, and warn about, an
 * ssh service minimal images do not have. With keys the guest needs a host
 * key (ed25519 takes milliseconds) and password logins off. */
static const char ssh_off[] = "ssh_keys: {}\n";
static const char ssh_on[] = "ssh_genkeytypes: [\"ed25519\"]\n"
                             "ssh_quiet_keygen: true\n"
                             "ssh_pwauth: false\n"
                             "ssh_authorized_keys:\n";

static int render_user_data(const struct cloudinit_job *job, const char *helper, char **ret)
{
    _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
    int r = al_buf_puts(&b, "#cloud-config\n"
                            "# agentlab job data; generated, never holds secrets\n"
                            "hostname: ");
    if (r == 0)
        r = append_yaml_quoted(&b, job->hostname);
    if (r == 0)
        r = al_buf_puts(&b, "\n");
    if (r == 0)
        r = al_buf_puts(&b, user_data_settings);

    bool ssh = job->ssh_authorized_keys && job->ssh_authorized_keys[0];
    if (r == 0)
        r = al_buf_puts(&b, ssh ? ssh_on : ssh_off);
    if (r == 0 && ssh) {
        for (const char *const *k = job->ssh_authorized_keys; r == 0 && *k; k++) {
            r = al_buf_puts(&b, "  - ");
            if (r == 0)
                r = append_yaml_quoted(&b, *k);
            if (r == 0)
                r = al_buf_puts(&b, "\n");
        }
    }

    if (r == 0 && job->job_blob) {
        r = al_buf_puts(&b, "write_files:\n"
                            "  - path: \"" AL_PROTO_JOB_FILE "\"\n"
                            "    owner: \"root:root\"\n"
                            "    permissions: \"0600\"\n"
                            "    encoding: \"b64\"\n"
                            "    content: \"");
        if (r == 0)
            r = append_base64(&b, job->job_blob, job->job_blob_len);
        if (r == 0)
            r = al_buf_puts(&b, "\"\n");
    }

    /* The list form runs the helper without a shell. */
    if (r == 0)
        r = al_buf_puts(&b, "runcmd:\n  - [");
    if (r == 0)
        r = append_yaml_quoted(&b, helper);
    if (r == 0)
        r = al_buf_puts(&b, "]\n"
                            "final_message: \"agentlab: cloud-init finished after $UPTIME s\"\n");
    if (r < 0)
        return r;
    *ret = al_buf_steal(&b);
    return *ret ? 0 : -ENOMEM;
}

int cloudinit_render(const struct cloudinit_job *job, char **ret_meta_data, char **ret_user_data,
                     struct al_error **err)
{
    if (!job)
        return al_error_set(err, EINVAL, "cloud-init: no job");
    int r = check_instance_id(job->instance_id, err);
    if (r < 0)
        return r;
    r = check_hostname(job->hostname, err);
    if (r < 0)
        return r;
    const char *helper = job->helper_path ? job->helper_path : AL_GUEST_HELPER_PATH;
    r = check_helper_path(helper, err);
    if (r < 0)
        return r;
    if (job->job_blob_len > 0 && !job->job_blob)
        return al_error_set(err, EINVAL, "cloud-init: job blob length without data");
    if (job->job_blob_len > AL_PROTO_MAX_PAYLOAD)
        return al_error_set(err, E2BIG, "cloud-init: job is %zu bytes (at most %u)",
                            job->job_blob_len, AL_PROTO_MAX_PAYLOAD);
    size_t nkeys = 0;
    for (const char *const *k = job->ssh_authorized_keys; k && *k; k++, nkeys++) {
        if (nkeys >= MAX_SSH_KEYS)
            return al_error_set(err, E2BIG, "cloud-init: more than %d ssh authorized keys",
                                MAX_SSH_KEYS);
        r = check_ssh_key(*k, nkeys, err);
        if (r < 0)
            return r;
    }

    _cleanup_free_ char *meta = NULL;
    _cleanup_free_ char *user = NULL;
    r = render_meta_data(job, &meta);
    if (r == 0)
        r = render_user_data(job, helper, &user);
    if (r == -EILSEQ)
        return al_error_set(err, EILSEQ, "cloud-init: a helper path or ssh key is not valid UTF-8");
    if (r < 0)
        return al_error_set_errno(err, -r, "cloud-init: rendering user-data");

    *ret_meta_data = TAKE_PTR(meta);
    *ret_user_data = TAKE_PTR(user);
    return 0;
}
