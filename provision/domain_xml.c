#include "provision/domain_xml.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "provision/proto/proto.h"
#include "runner/base/buf.h"
#include "runner/base/util.h"
#include "runner/base/xml.h"

/* Literal markup goes through EMIT, every value through EMITV (escaped), so
 * no value can reach the XML unescaped. */
static int emit(struct al_buf *b, const char *text)
{
    return al_buf_puts(b, text);
}

static int emit_esc(struct al_buf *b, const char *value)
{
    return al_xml_escape_append(b, value ? value : "");
}

#define EMIT(b, s)                    \
    do {                              \
        if ((r = emit((b), (s))) < 0) \
            goto fail;                \
    } while (0)
#define EMITV(b, v)                       \
    do {                                  \
        if ((r = emit_esc((b), (v))) < 0) \
            goto fail;                    \
    } while (0)
#define EMITF(b, ...)                                  \
    do {                                               \
        if ((r = al_buf_printf((b), __VA_ARGS__)) < 0) \
            goto fail;                                 \
    } while (0)

int domain_xml_build(const struct domain_params *p, char **ret_xml, struct al_error **err)
{
    if (!p->name || !p->domain_type || !p->kernel || !p->disk_path)
        return al_error_set(err, EINVAL, "domain XML: name, type, kernel and disk are required");
    if (p->vcpus < 1 || p->memory < (64u << 20))
        return al_error_set(err, EINVAL, "domain XML: need at least 1 vCPU and 64 MiB");

    _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
    int r = 0;
    EMIT(&b, "<domain type='");
    EMITV(&b, p->domain_type);
    EMIT(&b, "'>\n  <name>");
    EMITV(&b, p->name);
    EMIT(&b, "</name>\n  <metadata>\n    <" AL_XML_NS_PREFIX ":vm xmlns:" AL_XML_NS_PREFIX
             "='" AL_XML_NS "' job='");
    EMITV(&b, p->job_id);
    EMITF(&b, "' attempt='%d' owner='", p->attempt);
    EMITV(&b, p->owner);
    EMIT(&b, "' backend='");
    EMITV(&b, p->backend);
    EMIT(&b, "' image='");
    EMITV(&b, p->image);
    EMIT(&b, "'/>\n  </metadata>\n");
    EMITF(&b, "  <memory unit='KiB'>%" PRIu64 "</memory>\n", p->memory / 1024);
    EMITF(&b, "  <vcpu>%d</vcpu>\n", p->vcpus);
    EMIT(&b, "  <os>\n    <type arch='x86_64'>hvm</type>\n    <kernel>");
    EMITV(&b, p->kernel);
    EMIT(&b, "</kernel>\n");
    if (p->initrd) {
        EMIT(&b, "    <initrd>");
        EMITV(&b, p->initrd);
        EMIT(&b, "</initrd>\n");
    }
    if (p->cmdline) {
        EMIT(&b, "    <cmdline>");
        EMITV(&b, p->cmdline);
        EMIT(&b, "</cmdline>\n");
    }
    EMIT(&b, "  </os>\n  <features><acpi/></features>\n");
    if (streq(p->domain_type, "kvm"))
        EMIT(&b, "  <cpu mode='host-passthrough'/>\n");
    /* A throwaway VM never comes back: any stop ends it. */
    EMIT(&b, "  <clock offset='utc'/>\n"
             "  <on_poweroff>destroy</on_poweroff>\n"
             "  <on_reboot>destroy</on_reboot>\n"
             "  <on_crash>destroy</on_crash>\n"
             "  <devices>\n");
    if (p->emulator) {
        EMIT(&b, "    <emulator>");
        EMITV(&b, p->emulator);
        EMIT(&b, "</emulator>\n");
    }
    /* cache=unsafe: the overlay is deleted after the job, so flushes buy
     * nothing but latency. */
    EMIT(&b, "    <disk type='file' device='disk'>\n      <driver name='qemu' type='");
    EMITV(&b, p->disk_format ? p->disk_format : "qcow2");
    EMIT(&b, "' cache='unsafe' discard='unmap'/>\n      <source file='");
    EMITV(&b, p->disk_path);
    EMIT(&b, "'/>\n      <target dev='vda' bus='virtio'/>\n    </disk>\n");
    if (p->seed_path) {
        EMIT(&b, "    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n"
                 "      <source file='");
        EMITV(&b, p->seed_path);
        EMIT(&b, "'/>\n      <target dev='vdb' bus='virtio'/>\n      <readonly/>\n    </disk>\n");
    }
    /* Without a path libvirt puts the socket in its own channel directory
     * on the host that runs QEMU, and virDomainOpenChannel() reaches it; a
     * unix socket, not a pty, because QEMU sees a client connect at once. */
    EMIT(&b, "    <channel type='unix'>\n      <source mode='bind'");
    if (p->channel_path) {
        EMIT(&b, " path='");
        EMITV(&b, p->channel_path);
        EMIT(&b, "'");
    }
    EMIT(&b, "/>\n      <target type='virtio' name='" AL_PROTO_PORT_NAME "'/>\n    </channel>\n");
    EMIT(&b, "    <serial type='pty'>\n");
    if (p->console_log) {
        EMIT(&b, "      <log file='");
        EMITV(&b, p->console_log);
        EMIT(&b, "' append='off'/>\n");
    }
    EMIT(&b, "      <target port='0'/>\n    </serial>\n    <console type='pty'/>\n");
    if (p->network) {
        EMIT(&b, "    <interface type='network'>\n      <source network='");
        EMITV(&b, p->network);
        EMIT(&b,
             "'/>\n      <model type='virtio'/>\n      <filterref filter='" AL_NWFILTER_NAME "'>\n"
             "        <parameter name='GATEWAY' value='");
        EMITV(&b, p->gateway ? p->gateway : "0.0.0.0");
        EMIT(&b, "'/>\n");
        /* The filter's rule needs the variable; without an IPv6 address on
         * the network, ::1 (dropped anyway) stands in. */
        bool any6 = false;
        for (char *const *g6 = p->gateways6; g6 && *g6; g6++) {
            EMIT(&b, "        <parameter name='GATEWAY6' value='");
            EMITV(&b, *g6);
            EMIT(&b, "'/>\n");
            any6 = true;
        }
        if (!any6)
            EMIT(&b, "        <parameter name='GATEWAY6' value='::1'/>\n");
        EMIT(&b, "      </filterref>\n    </interface>\n");
    }
    EMIT(&b, "    <rng model='virtio'>\n      <backend model='random'>/dev/urandom</backend>\n"
             "    </rng>\n"
             "    <memballoon model='none'/>\n"
             "  </devices>\n</domain>\n");
    *ret_xml = al_buf_steal(&b);
    return *ret_xml ? 0 : al_error_set(err, ENOMEM, "domain XML");
fail:
    return al_error_set(err, -r, "domain XML for %s: a value cannot be written as XML", p->name);
}

int volume_xml_build(const char *name, const char *backing, uint64_t capacity, char **ret_xml,
                     struct al_error **err)
{
    _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
    int r = 0;
    EMIT(&b, "<volume>\n  <name>");
    EMITV(&b, name);
    EMITF(&b, "</name>\n  <capacity unit='bytes'>%" PRIu64 "</capacity>\n", capacity);
    EMIT(&b, "  <target>\n    <format type='qcow2'/>\n"
             "    <permissions><mode>0600</mode></permissions>\n  </target>\n"
             "  <backingStore>\n    <path>");
    EMITV(&b, backing);
    EMIT(&b, "</path>\n    <format type='qcow2'/>\n  </backingStore>\n</volume>\n");
    *ret_xml = al_buf_steal(&b);
    return *ret_xml ? 0 : al_error_set(err, ENOMEM, "volume XML");
fail:
    return al_error_set(err, -r, "volume XML for %s", name);
}

int seed_volume_xml_build(const char *name, uint64_t capacity, char **ret_xml,
                          struct al_error **err)
{
    _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
    int r = 0;
    EMIT(&b, "<volume>\n  <name>");
    EMITV(&b, name);
    EMITF(&b, "</name>\n  <capacity unit='bytes'>%" PRIu64 "</capacity>\n", capacity);
    /* read-only to the guest; QEMU's user reads it like the local seed */
    EMIT(&b, "  <target>\n    <format type='raw'/>\n"
             "    <permissions><mode>0644</mode></permissions>\n  </target>\n</volume>\n");
    *ret_xml = al_buf_steal(&b);
    return *ret_xml ? 0 : al_error_set(err, ENOMEM, "volume XML");
fail:
    return al_error_set(err, -r, "volume XML for %s", name);
}

int pool_xml_build(const char *name, const char *path, char **ret_xml, struct al_error **err)
{
    _cleanup_buf_ struct al_buf b = AL_BUF_INIT;
    int r = 0;
    EMIT(&b, "<pool type='dir'>\n  <name>");
    EMITV(&b, name);
    EMIT(&b, "</name>\n  <target>\n    <path>");
    EMITV(&b, path);
    EMIT(&b, "</path>\n    <permissions><mode>0711</mode></permissions>\n  </target>\n</pool>\n");
    *ret_xml = al_buf_steal(&b);
    return *ret_xml ? 0 : al_error_set(err, ENOMEM, "pool XML");
fail:
    return al_error_set(err, -r, "pool XML for %s", name);
}

const char *nwfilter_xml(void)
{
    /* Priorities: lower runs first. DHCP and DNS to the gateway (IPv4) pass,
     * then everything to private, shared, link-local and loopback space and
     * to the host's own addresses on the network, IPv4 and IPv6, is dropped;
     * the internet stays reachable. */
    return "<filter name='" AL_NWFILTER_NAME "' chain='root'>\n"
           "  <filterref filter='no-mac-spoofing'/>\n"
           "  <filterref filter='no-ip-spoofing'/>\n"
           "  <rule action='accept' direction='out' priority='100'>\n"
           "    <udp srcportstart='68' dstportstart='67'/>\n"
           "  </rule>\n"
           "  <rule action='accept' direction='out' priority='110'>\n"
           "    <udp dstipaddr='$GATEWAY' dstportstart='53'/>\n"
           "  </rule>\n"
           "  <rule action='accept' direction='out' priority='110'>\n"
           "    <tcp dstipaddr='$GATEWAY' dstportstart='53'/>\n"
           "  </rule>\n"
           "  <rule action='drop' direction='out' priority='200'>\n"
           "    <ip dstipaddr='$GATEWAY'/>\n"
           "  </rule>\n"
           "  <rule action='drop' direction='out' priority='200'>\n"
           "    <ipv6 dstipaddr='$GATEWAY6'/>\n"
           "  </rule>\n"
           "  <rule action='drop' direction='out' priority='210'>\n"
           "    <ip dstipaddr='10.0.0.0' dstipmask='8'/>\n"
           "  </rule>\n"
           "  <rule action='drop' direction='out' priority='210'>\n"
           "    <ip dstipaddr='172.16.0.0' dstipmask='12'/>\n"
           "  </rule>\n"
           "  <rule action='drop' direction='out' priority='210'>\n"
           "    <ip dstipaddr='192.168.0.0' dstipmask='16'/>\n"
           "  </rule>\n"
           "  <rule action='drop' direction='out' priority='210'>\n"
           "    <ip dstipaddr='100.64.0.0' dstipmask='10'/>\n"
           "  </rule>\n"
           "  <rule action='drop' direction='out' priority='210'>\n"
           "    <ip dstipaddr='169.254.0.0' dstipmask='16'/>\n"
           "  </rule>\n"
           "  <rule action='drop' direction='out' priority='210'>\n"
           "    <ip dstipaddr='127.0.0.0' dstipmask='8'/>\n"
           "  </rule>\n"
           "  <rule action='drop' direction='out' priority='210'>\n"
           "    <ipv6 dstipaddr='fc00::' dstipmask='7'/>\n"
           "  </rule>\n"
           "  <rule action='drop' direction='out' priority='210'>\n"
           "    <ipv6 dstipaddr='fe80::' dstipmask='10'/>\n"
           "  </rule>\n"
           "  <rule action='drop' direction='out' priority='210'>\n"
           "    <ipv6 dstipaddr='::1' dstipmask='128'/>\n"
           "  </rule>\n"
           "</filter>\n";
}

void network_gateways_clear(struct network_gateways *g)
{
    free(g->ipv4);
    strv_free(g->ipv6);
    *g = (struct network_gateways){0};
}

int network_gateways_parse(const char *net_xml, struct network_gateways *ret, struct al_error **err)
{
    struct network_gateways g = {0};
    size_t n6 = 0;
    if (!(g.ipv6 = calloc(1, sizeof(*g.ipv6))))
        return al_error_set(err, ENOMEM, "out of memory");
    int r = 0;
    for (const char *ip = net_xml; ip && (ip = strstr(ip, "<ip ")) && r == 0; ip += 4) {
        _cleanup_free_ char *family = al_xml_attr(ip, "family");
        _cleanup_free_ char *address = al_xml_attr(ip, "address");
        if (!address)
            continue;
        bool v6 = family && streq(family, "ipv6");
        unsigned char bin[sizeof(struct in6_addr)];
        if (family && !v6 && !streq(family, "ipv4")) {
            r = al_error_set(err, EINVAL, "<ip address='%s'> has the unknown family '%s'", address,
                             family);
            break;
        }
        if (inet_pton(v6 ? AF_INET6 : AF_INET, address, bin) != 1) {
            r = al_error_set(err, EINVAL, "<ip address='%s'> is not an %s address", address,
                             v6 ? "IPv6" : "IPv4");
            break;
        }
        if (!v6) {
            if (!g.ipv4)
                g.ipv4 = TAKE_PTR(address);
            continue;
        }
        char **grown = reallocarray(g.ipv6, n6 + 2, sizeof(*grown));
        if (!grown) {
            r = al_error_set(err, ENOMEM, "out of memory");
            break;
        }
        g.ipv6 = grown;
        g.ipv6[n6++] = TAKE_PTR(address);
        g.ipv6[n6] = NULL;
    }
    if (r < 0) {
        network_gateways_clear(&g);
        return r;
    }
    *ret = g;
    return 0;
}

int domain_metadata_parse(const char *xml, struct domain_metadata *ret)
{
    /* virDomainGetMetadata(AL_XML_NS) returns our element without its
     * namespace ("<vm .../>"): the lookup by namespace is what proves it is
     * ours. Accept that form and the namespaced one we wrote. */
    if (!xml || (strncmp(xml, "<vm ", 4) != 0 && !strstr(xml, AL_XML_NS)))
        return -EINVAL;
    struct domain_metadata m = {0};
    m.job_id = al_xml_attr(xml, "job");
    m.owner = al_xml_attr(xml, "owner");
    m.backend = al_xml_attr(xml, "backend");
    m.image = al_xml_attr(xml, "image");
    _cleanup_free_ char *attempt = al_xml_attr(xml, "attempt");
    if (attempt && al_parse_int(attempt, 0, 1000000, &m.attempt) < 0)
        m.attempt = 0;
    *ret = m;
    return 0;
}

void domain_metadata_clear(struct domain_metadata *m)
{
    free(m->job_id);
    free(m->owner);
    free(m->backend);
    free(m->image);
    *m = (struct domain_metadata){0};
}
