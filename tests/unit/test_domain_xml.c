/* Domain, volume, pool and nwfilter XML: libvirt's own RNG schemas accept
 * them (virt-xml-validate), the test driver defines the domain, and our
 * metadata reads back. */
#include "test_util.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "runner/base/util.h"
#include "runner/base/xml.h"
#include "provision/backend.h"
#include "provision/domain_xml.h"

static char *tmp;

static int setup(void **state)
{
    (void)state;
    tmp = test_tmpdir("domxml");
    return tmp ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    test_tmpdir_remove(tmp);
    return 0;
}

/* Runs virt-xml-validate on xml with the given schema; returns its status. */
static int validate(const char *xml, const char *schema)
{
    char *path = al_path_join(tmp, "doc.xml");
    struct al_error *err = NULL;
    assert_int_equal(al_write_file_atomic(path, xml, strlen(xml), 0644, &err), 0);
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "virt-xml-validate %s %s >/dev/null 2>&1", path, schema);
    int st = system(cmd);
    free(path);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static struct domain_params sample(void)
{
    return (struct domain_params){
            .name = "agentlab-j0123456789ab0011aabb-1",
            .domain_type = "qemu",
            .vcpus = 2,
            .memory = 1024ull << 20,
            .kernel = "/var/lib/agentlab/images/debian-12/vmlinuz",
            .initrd = "/var/lib/agentlab/images/debian-12/initrd.img",
            .cmdline = "root=/dev/vda rw console=ttyS0 quiet",
            .disk_path = "/var/lib/agentlab/pools/local/x.qcow2",
            .disk_format = "qcow2",
            .seed_path = "/run/agentlab/vms/x/seed.iso",
            .channel_path = "/run/agentlab/vms/x/job.sock",
            .console_log = "/run/agentlab/vms/x/console.log",
            .job_id = "j0123456789ab0011aabb",
            .attempt = 1,
            .owner = "daemon:00112233445566778899aabbccddeeff",
            .backend = "local",
            .image = "debian-12",
    };
}

static void test_domain_validates(void **state)
{
    (void)state;
    struct domain_params p = sample();
    char *xml = NULL;
    struct al_error *err = NULL;
    assert_int_equal(domain_xml_build(&p, &xml, &err), 0);
    assert_int_equal(validate(xml, "domain"), 0);
    /* no NIC unless asked for one */
    assert_null(strstr(xml, "<interface"));
    /* QEMU stays under libvirt's default confinement (sVirt): never a
     * seclabel of our own, least of all type='none' */
    assert_null(strstr(xml, "seclabel"));
    assert_non_null(strstr(xml, "name='org.agentlab.job'"));
    assert_non_null(strstr(xml, "<on_reboot>destroy</on_reboot>"));
    free(xml);

    /* with a network: a NIC behind the egress filter */
    p.network = "default";
    p.gateway = "203.0.113.1";
    p.domain_type = "kvm";
    p.seed_path = NULL;
    assert_int_equal(domain_xml_build(&p, &xml, &err), 0);
    assert_int_equal(validate(xml, "domain"), 0);
    assert_non_null(strstr(xml, "<filterref filter='" AL_NWFILTER_NAME "'>"));
    assert_non_null(strstr(xml, "<parameter name='GATEWAY' value='203.0.113.1'/>"));
    /* the IPv6 rule's variable is always set: ::1 when the network has none */
    assert_non_null(strstr(xml, "<parameter name='GATEWAY6' value='::1'/>"));
    /* one NIC, and it is the filtered one */
    const char *nic = strstr(xml, "<interface");
    assert_non_null(nic);
    assert_null(strstr(nic + 1, "<interface"));
    assert_true(strstr(xml, "<filterref") > nic);
    assert_null(strstr(xml, "seclabel"));
    assert_non_null(strstr(xml, "host-passthrough"));
    assert_null(strstr(xml, "vdb"));
    free(xml);

    /* the host's IPv6 addresses on the network, each one a value */
    char *six[] = {"2001:db8::1", "fd00:1::1", NULL};
    p.gateways6 = six;
    assert_int_equal(domain_xml_build(&p, &xml, &err), 0);
    assert_int_equal(validate(xml, "domain"), 0);
    assert_non_null(strstr(xml, "<parameter name='GATEWAY6' value='2001:db8::1'/>\n"
                                "        <parameter name='GATEWAY6' value='fd00:1::1'/>"));
    assert_null(strstr(xml, "value='::1'"));
    free(xml);
}

/* The family of every <ip> of the network is checked: an IPv6 address first
 * does not become the IPv4 gateway, and every IPv6 one is collected. */
static void test_network_gateways(void **state)
{
    (void)state;
    const char *net = "<network>\n  <name>default</name>\n  <bridge name='virbr0'/>\n"
                      "  <ip family='ipv6' address='2001:db8:ca2:2::1' prefix='64'/>\n"
                      "  <ip address='192.168.122.1' netmask='255.255.255.0'>\n"
                      "    <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>\n"
                      "  </ip>\n"
                      "  <ip family=\"ipv4\" address='10.9.0.1' prefix='24'/>\n"
                      "  <ip family='ipv6' address='fd42::1' prefix='64'/>\n"
                      "</network>\n";
    struct network_gateways g = {0};
    struct al_error *err = NULL;
    assert_int_equal(network_gateways_parse(net, &g, &err), 0);
    assert_string_equal(g.ipv4, "192.168.122.1");
    assert_non_null(g.ipv6);
    assert_string_equal(g.ipv6[0], "2001:db8:ca2:2::1");
    assert_string_equal(g.ipv6[1], "fd42::1");
    assert_null(g.ipv6[2]);
    network_gateways_clear(&g);

    /* IPv6 only: no IPv4 gateway, which the backend refuses */
    assert_int_equal(network_gateways_parse("<network><ip family='ipv6' address='fd42::1' "
                                            "prefix='64'/></network>",
                                            &g, &err),
                     0);
    assert_null(g.ipv4);
    assert_string_equal(g.ipv6[0], "fd42::1");
    network_gateways_clear(&g);

    /* no <ip> at all */
    assert_int_equal(network_gateways_parse("<network><name>x</name></network>", &g, &err), 0);
    assert_null(g.ipv4);
    assert_null(g.ipv6[0]);
    network_gateways_clear(&g);

    static const struct {
        const char *xml, *msg;
    } bad[] = {
            {"<network><ip address='fd42::1' prefix='64'/></network>",
             "<ip address='fd42::1'> is not an IPv4 address"},
            {"<network><ip family='ipv6' address='10.0.0.1'/></network>",
             "<ip address='10.0.0.1'> is not an IPv6 address"},
            {"<network><ip family='ipx' address='10.0.0.1'/></network>",
             "<ip address='10.0.0.1'> has the unknown family 'ipx'"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(network_gateways_parse(bad[i].xml, &g, &err), -EINVAL);
        assert_string_equal(al_error_message(err), bad[i].msg);
        err = al_error_free(err);
    }
}

static void test_values_are_escaped(void **state)
{
    (void)state;
    struct domain_params p = sample();
    p.cmdline = "console=ttyS0 x='<&>\"";
    char *xml = NULL;
    struct al_error *err = NULL;
    assert_int_equal(domain_xml_build(&p, &xml, &err), 0);
    assert_non_null(strstr(xml, "x=&apos;&lt;&amp;&gt;&quot;"));
    assert_int_equal(validate(xml, "domain"), 0);
    free(xml);

    p.cmdline = "bad\x01value";
    assert_true(domain_xml_build(&p, &xml, &err) < 0);
    assert_non_null(strstr(al_error_message(err), "cannot be written as XML"));
    al_error_free(err);
}

/* The remote transport: nothing of the XML names a path of this host but
 * the disks the host's own storage pool reported. The channel is a unix
 * socket without a path (libvirt's channel directory on the host, reached
 * with virDomainOpenChannel), the console has no log file (it is read as
 * a stream), and the seed is the uploaded volume's path. */
static void test_domain_remote_transport(void **state)
{
    (void)state;
    struct domain_params p = sample();
    p.channel_path = NULL;
    p.console_log = NULL;
    p.seed_path = "/var/lib/libvirt/images/agentlab-j1-1" AL_SEED_VOL_SUFFIX;
    char *xml = NULL;
    struct al_error *err = NULL;
    assert_int_equal(domain_xml_build(&p, &xml, &err), 0);
    assert_int_equal(validate(xml, "domain"), 0);
    assert_null(strstr(xml, "/run/agentlab"));
    assert_null(strstr(xml, "<log "));
    assert_non_null(strstr(xml, "<channel type='unix'>\n      <source mode='bind'/>\n"
                                "      <target type='virtio' name='org.agentlab.job'/>"));
    assert_non_null(strstr(xml, "<serial type='pty'>\n      <target port='0'/>"));
    assert_non_null(strstr(xml, "<source file='/var/lib/libvirt/images/agentlab-j1-1.seed.iso'/>\n"
                                "      <target dev='vdb' bus='virtio'/>\n      <readonly/>"));
    free(xml);

    /* the local transport names its socket and log file */
    p = sample();
    assert_int_equal(domain_xml_build(&p, &xml, &err), 0);
    assert_non_null(strstr(xml, "<source mode='bind' path='/run/agentlab/vms/x/job.sock'/>"));
    assert_non_null(strstr(xml, "<log file='/run/agentlab/vms/x/console.log' append='off'/>"));
    free(xml);

    /* the seed volume: raw, readable by QEMU's user, of the ISO's size */
    assert_int_equal(seed_volume_xml_build("agentlab-j1-1" AL_SEED_VOL_SUFFIX, 376832, &xml, &err),
                     0);
    assert_int_equal(validate(xml, "storagevol"), 0);
    assert_non_null(strstr(xml, "<name>agentlab-j1-1.seed.iso</name>"));
    assert_non_null(strstr(xml, "<capacity unit='bytes'>376832</capacity>"));
    assert_non_null(strstr(xml, "<format type='raw'/>"));
    assert_non_null(strstr(xml, "<mode>0644</mode>"));
    free(xml);
}

/* transport = auto decides by the URI: a network transport or a host name
 * is remote, a unix socket local. */
static void test_uri_is_remote(void **state)
{
    (void)state;
    static const char *const remote[] = {
            "qemu+ssh://agentlab@h2/system",
            "qemu+tls://h2.example/system",
            "qemu+tcp://127.0.0.1:16599/system",
            "qemu+libssh2://u@h/system",
            "qemu://h2/system",
            "qemu+ext://h/system?command=/bin/x",
    };
    static const char *const local[] = {
            "qemu:///system",
            "qemu:///session",
            "test:///default",
            "qemu+unix:///system?socket=/run/x/libvirt-sock",
            "",
            "qemu:///system?x=1",
    };
    for (size_t i = 0; i < sizeof(remote) / sizeof(remote[0]); i++) {
        if (!libvirt_uri_is_remote(remote[i]))
            fail_msg("%s taken for local", remote[i]);
    }
    for (size_t i = 0; i < sizeof(local) / sizeof(local[0]); i++) {
        if (libvirt_uri_is_remote(local[i]))
            fail_msg("%s taken for remote", local[i]);
    }
    assert_false(libvirt_uri_is_remote(NULL));
}

/* What host ls shows of a URI: no password, no query. */
static void test_uri_redact(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
            {"qemu+ssh://agentlab@h2/system", "qemu+ssh://agentlab@h2/system"},
            {"qemu+ssh://u:secret@h2:22/system", "qemu+ssh://u@h2:22/system"},
            {"qemu+tls://h2.example/system?pkipath=/etc/pki/x", "qemu+tls://h2.example/system"},
            {"qemu+libssh2://u:pw@h/system?keyfile=/k&known_hosts=/kh",
             "qemu+libssh2://u@h/system"},
            {"qemu:///system", "qemu:///system"},
            {"test:///default", "test:///default"},
            {"qemu+unix:///system?socket=/run/x", "qemu+unix:///system"},
            {"", ""},
    };
    char buf[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        libvirt_uri_redact(cases[i][0], buf, sizeof(buf));
        if (strcmp(buf, cases[i][1]) != 0)
            fail_msg("%s gave %s, not %s", cases[i][0], buf, cases[i][1]);
    }
    libvirt_uri_redact(NULL, buf, sizeof(buf));
    assert_string_equal(buf, "");
    char small[12];
    libvirt_uri_redact("qemu+ssh://u:secret@host/system", small, sizeof(small));
    assert_string_equal(small, "qemu+ssh://"); /* cut, never the password */
}

static void test_volume_pool_filter_validate(void **state)
{
    (void)state;
    char *xml = NULL;
    struct al_error *err = NULL;
    assert_int_equal(
            volume_xml_build("agentlab-j1-1.qcow2", "/srv/img/disk.qcow2", 2ull << 30, &xml, &err),
            0);
    assert_int_equal(validate(xml, "storagevol"), 0);
    free(xml);
    assert_int_equal(pool_xml_build("agentlab-local-0badc0de", "/srv/pools/local", &xml, &err), 0);
    assert_int_equal(validate(xml, "storagepool"), 0);
    free(xml);
    assert_int_equal(validate(nwfilter_xml(), "nwfilter"), 0);
    /* the egress filter drops private, shared, link-local and loopback
     * space and spoofing */
    static const char *const dropped[] = {
            "dstipaddr='10.0.0.0' dstipmask='8'",
            "dstipaddr='172.16.0.0' dstipmask='12'",
            "dstipaddr='192.168.0.0' dstipmask='16'",
            "dstipaddr='100.64.0.0' dstipmask='10'",
            "dstipaddr='169.254.0.0' dstipmask='16'",
            "dstipaddr='127.0.0.0' dstipmask='8'",
            "dstipaddr='fc00::' dstipmask='7'",
            "dstipaddr='fe80::' dstipmask='10'",
            "dstipaddr='::1' dstipmask='128'",
            "<ipv6 dstipaddr='$GATEWAY6'/>",
            "filter='no-mac-spoofing'",
            "filter='no-ip-spoofing'",
    };
    for (size_t i = 0; i < sizeof(dropped) / sizeof(dropped[0]); i++)
        assert_non_null(strstr(nwfilter_xml(), dropped[i]));
    assert_null(strstr(nwfilter_xml(), "action='accept' direction='out' priority='1'>"));
}

static void quiet(void *d, virErrorPtr e)
{
    (void)d;
    (void)e;
}

static void test_test_driver_accepts_and_metadata_reads_back(void **state)
{
    (void)state;
    virSetErrorFunc(NULL, quiet);
    virConnectPtr conn = virConnectOpen("test:///default");
    assert_non_null(conn);
    struct domain_params p = sample();
    p.domain_type = "test";
    char *xml = NULL;
    struct al_error *err = NULL;
    assert_int_equal(domain_xml_build(&p, &xml, &err), 0);
    virDomainPtr dom = virDomainDefineXML(conn, xml);
    if (!dom)
        fail_msg("test driver refused the XML: %s", virGetLastErrorMessage());
    char *meta = virDomainGetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT, AL_XML_NS, 0);
    assert_non_null(meta);
    struct domain_metadata m;
    assert_int_equal(domain_metadata_parse(meta, &m), 0);
    assert_string_equal(m.job_id, p.job_id);
    assert_string_equal(m.owner, p.owner);
    assert_string_equal(m.backend, "local");
    assert_string_equal(m.image, "debian-12");
    assert_int_equal(m.attempt, 1);
    domain_metadata_clear(&m);
    free(meta);
    /* a domain without our namespace is not ours */
    assert_int_equal(domain_metadata_parse("<other job='x'/>", &m), -EINVAL);
    virDomainUndefine(dom);
    virDomainFree(dom);
    virConnectClose(conn);
    free(xml);
}

static void test_xml_attr(void **state)
{
    (void)state;
    char *v = al_xml_attr("<a:vm xmlns:a='x' job=\"j1\" xjob='no' owner='o&amp;k'/>", "job");
    assert_string_equal(v, "j1");
    free(v);
    v = al_xml_attr("<a:vm owner='o&amp;k'/>", "owner");
    assert_string_equal(v, "o&k");
    free(v);
    assert_null(al_xml_attr("<a:vm xjob='1'/>", "job"));
    assert_null(al_xml_attr("<a:vm job='unterminated/>", "job"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
            cmocka_unit_test(test_domain_validates),
            cmocka_unit_test(test_domain_remote_transport),
            cmocka_unit_test(test_uri_is_remote),
            cmocka_unit_test(test_uri_redact),
            cmocka_unit_test(test_values_are_escaped),
            cmocka_unit_test(test_network_gateways),
            cmocka_unit_test(test_volume_pool_filter_validate),
            cmocka_unit_test(test_test_driver_accepts_and_metadata_reads_back),
            cmocka_unit_test(test_xml_attr),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
