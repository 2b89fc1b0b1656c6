/* A build-only stand-in for libcuda.so.1 (the NVIDIA driver library).
 *
 * TVM's CUDA runtime library links against the driver, so on a machine without one it fails to
 * load, and TVM then keeps only CUDA C source in the artifact. Loading this stub first lets the
 * real CUDA module code load, so device code is compiled (by nvcc) at build time and the
 * artifact holds a fatbin. Every entry point reports CUDA_ERROR_NO_DEVICE (100); nothing runs on it.
 * The symbols are the driver entry points libtvm_runtime_cuda.so imports.
 */
#define STUB(name) int name(void) { return 100; }
STUB(cuDeviceGetName)
STUB(cuFuncSetAttribute)
STUB(cuLaunchKernelEx)
STUB(cuModuleGetFunction)
STUB(cuModuleLoadData)
STUB(cuModuleUnload)
STUB(cuTensorMapEncodeTiled)
int cuGetErrorName(int error, const char** text) { (void)error; *text = "CUDA_ERROR_NO_DEVICE"; return 0; }
int cuGetErrorString(int error, const char** text) {
  (void)error;
  *text = "no NVIDIA driver: edgepress's build-only libcuda stub";
  return 0;
}
