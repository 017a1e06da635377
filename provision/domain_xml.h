/* Libvirt XML for agentlab's VMs: the transient domain, the overlay volume,
 * the backend's storage pool and the egress nwfilter, plus the metadata
 * element that marks a domain as ours. */
#ifndef AL_DOMAIN_XML_H
#define AL_DOMAIN_XML_H

#include <stdbool.h>
#include <stdint.h>

#include "runner/base/error.h"

#define AL_XML_NS        "https://agentlab.dev/xmlns/domain/1"
#define AL_XML_NS_PREFIX "agentlab"
/* "-2": the filter takes GATEWAY6 since it drops IPv6 to the host too; a new
 * name, so that redefining it cannot break the VMs of an older agentlabd that
 * still run with the first one */
#define AL_NWFILTER_NAME "agentlab-egress-2"
#define AL_DOMAIN_PREFIX "agentlab-"
/* a seed volume's name: the domain's and this */
#define AL_SEED_VOL_SUFFIX ".seed.iso"

struct domain_params {
    const char *name;
    const char *domain_type; /* "kvm" or "qemu" */
    const char *emulator;    /* the QEMU binary, or NULL for libvirt's default */
    int vcpus;
    uint64_t memory; /* bytes */
    const char *kernel;
    const char *initrd;
    const char *cmdline;
    const char *disk_path;
    const char *disk_format;  /* "qcow2" */
    const char *seed_path;    /* NoCloud ISO (a file or a volume's path on the
                               * host), or NULL (guestfs injection) */
    const char *channel_path; /* the channel's unix socket on this host, or NULL:
                               * libvirt's own path there (remote transport) */
    const char *console_log;  /* serial console log file written by virtlogd,
                               * or NULL (remote transport: read as a stream) */
    const char *network;      /* libvirt network name, or NULL for no NIC */
    const char *gateway;      /* with network: the IPv4 address DHCP/DNS may reach */
    char *const *gateways6;   /* with network: the host's IPv6 addresses on it,
                               * NULL-terminated; NULL or empty when it has none */
    /* ownership metadata */
    const char *job_id;
    int attempt;
    const char *owner;
    const char *backend;
    const char *image;
};

/* Builds the domain XML. Every value is escaped; values that cannot be
 * represented are refused. The caller frees *ret_xml. */
int domain_xml_build(const struct domain_params *p, char **ret_xml, struct al_error **err);

/* Volume XML for a qcow2 overlay named name backed by backing (a qcow2 file),
 * with the given virtual size in bytes. */
int volume_xml_build(const char *name, const char *backing, uint64_t capacity, char **ret_xml,
                     struct al_error **err);

/* Volume XML for a raw seed ISO of capacity bytes, uploaded afterwards. */
int seed_volume_xml_build(const char *name, uint64_t capacity, char **ret_xml,
                          struct al_error **err);

/* A transient dir storage pool named name at path. */
int pool_xml_build(const char *name, const char *path, char **ret_xml, struct al_error **err);

/* The nwfilter that drops guest traffic to private, link-local and loopback
 * ranges (IPv4 and IPv6) and to the host ($GATEWAY, every $GATEWAY6),
 * except DHCP and DNS to $GATEWAY over IPv4. */
const char *nwfilter_xml(void);

/* The host's addresses on a libvirt network, from its XML
 * (virNetworkGetXMLDesc()): the first IPv4 <ip address> and every IPv6
 * one, each <ip>'s family checked against its address. */
struct network_gateways {
    char *ipv4;  /* NULL when the network has none */
    char **ipv6; /* NULL-terminated, never NULL after a successful parse */
};

/* Returns 0, or -EINVAL naming the <ip> whose address is not of its
 * family (or of an unknown family). The caller clears *ret. */
int network_gateways_parse(const char *net_xml, struct network_gateways *ret,
                           struct al_error **err);
void network_gateways_clear(struct network_gateways *g);

/* Parses our metadata element as virDomainGetMetadata(..., AL_XML_NS)
 * returns it. Fields absent from the element are left NULL/0. Returns 0, or
 * -EINVAL when the element is not ours. */
struct domain_metadata {
    char *job_id;
    int attempt;
    char *owner;
    char *backend;
    char *image;
};
int domain_metadata_parse(const char *xml, struct domain_metadata *ret);
void domain_metadata_clear(struct domain_metadata *m);

#endif
