/* The smallest libvirt client: connect, list the domains, sleep. Its RSS is
 * the floor any libvirt client on this host starts from (libvirt's client
 * library and what it links: libcrypto, gnutls, libxml2, glib, ICU).
 * Built and measured by benches/daemon.rs. */
#include <libvirt/libvirt.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    virConnectPtr conn = virConnectOpen(argc > 1 ? argv[1] : "test:///default");
    virDomainPtr *domains = NULL;
    int n;

    if (!conn)
        return 1;
    n = virConnectListAllDomains(conn, &domains, 0);
    printf("%d\n", n);
    fflush(stdout);
    for (int i = 0; i < n; i++)
        virDomainFree(domains[i]);
    free(domains);
    sleep(30);
    virConnectClose(conn);
    return 0;
}
