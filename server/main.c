/* main.c — dcnserve's entry point: configuration, logging (first any
 * unknown DCNSERVE_* variable, then the effective configuration), then the
 * server (srv_run). Exit status: 0 after a clean drain, 1 if the drain deadline
 * passed with requests in flight, 2 on a start-up error. */
#include <unistd.h>

#include "server/config.h"
#include "server/log.h"
#include "server/srv.h"

int main(int argc, char **argv)
{
    srv_config cfg;
    int rc = cfg_parse(&cfg, argc, argv);
    if (rc != 0) return rc > 0 ? 0 : 2;
    log_set_level((log_level)log_parse_level(cfg.log_level));
    cfg_warn_unknown_env(environ);
    cfg_log(&cfg);
    return srv_run(&cfg);
}
