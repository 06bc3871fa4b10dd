// OpenMP when the compiler has it; otherwise single-threaded stand-ins (the pragmas are then ignored), so the
// module still builds where OpenMP is missing (e.g. Apple clang without libomp). `tinygpt info` reports which.
#pragma once
#if defined(_OPENMP)
#include <omp.h>
#else
inline int omp_get_thread_num() { return 0; }
inline int omp_get_num_threads() { return 1; }
inline int omp_get_max_threads() { return 1; }
#endif
