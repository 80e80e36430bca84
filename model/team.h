/* team.h — internal: one GEMM split by output panels, rows or both across
 * the calling thread and a few helper threads (team.c). dcn.h exposes it as dcn_team. */
#ifndef DCN_TEAM_H
#define DCN_TEAM_H

#include "model/kernels.h"

typedef struct kteam kteam;

/* Starts `helpers` threads (1..255); NULL if out of memory or threads. */
kteam *kteam_new(size_t helpers);
void kteam_free(kteam *t); /* NULL is fine; joins the helpers */
size_t kteam_threads(const kteam *t); /* helpers + 1 */
size_t kteam_jobs(const kteam *t);    /* jobs its helpers ran; not while it runs one */
/* Begins a burst ahead of the first split GEMM: the first `helpers`
 * helpers wake now and spin for their jobs (team.c). NULL is fine. */
void kteam_wake(kteam *t, size_t helpers);
/* Ends the burst that kteam_wake or the first split GEMM began: the
 * helpers sleep now instead of spinning for the next GEMM (team.c). NULL
 * is fine. */
void kteam_rest(kteam *t);
/* ks->gemm with the same arguments, its panels cut into contiguous shares:
 * the caller computes the first, each helper one other. Not reentrant. */
void kteam_gemm(kteam *t, const kern_set *ks, size_t m, const float *x, size_t ldx, const klinear *L,
                const krange *rg, size_t n_rg, float *y, size_t ldy, const kepi *e);
/* The same cut into a grid: rgroups groups of contiguous rows times
 * cgroups shares of contiguous panels, one job each (clamped to the rows,
 * the panels and the team's threads; the caller runs the first). */
void kteam_gemm_grid(kteam *t, const kern_set *ks, size_t rgroups, size_t cgroups, size_t m, const float *x,
                     size_t ldx, const klinear *L, const krange *rg, size_t n_rg, float *y, size_t ldy,
                     const kepi *e);

#endif
