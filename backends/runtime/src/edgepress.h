/* edgepress.h: run an edgepress artifact folder from C or C++ (runtime/libedgepress.so).
 *
 * The folder is what `compress` wrote: manifest.json (input and output names, shapes, dtypes,
 * the target) and model.so; runtime/ holds this header, libedgepress.so and the TVM runtime
 * libraries it needs. No Python and no TVM compiler are involved.
 *
 * Every function returns; none throws. A call that fails returns EP_ERROR (or NULL) and
 * ep_error(model) says why, until the next call on that model. One ep_model is one
 * loaded artifact; use it from one thread at a time.
 *
 *   ep_model* m;
 *   if (ep_load("out/", &m) != EP_OK) { fprintf(stderr, "%s\n", ep_error(m)); ... }
 *   ep_set_input(m, "input", pixels, sizeof pixels);
 *   ep_run(m);
 *   ep_get_output(m, "logits", logits, sizeof logits);
 *   ep_free(m);
 */
#ifndef EDGEPRESS_H_
#define EDGEPRESS_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define EP_API __attribute__((visibility("default")))
#else
#define EP_API
#endif

#define EP_OK 0
#define EP_ERROR (-1)

typedef struct ep_model ep_model;

/* A tensor's name, dtype ("float32", "int64", "uint8", ...), shape and size in bytes. The
 * strings and the shape stay valid until ep_free. */
typedef struct {
  const char* name;
  const char* dtype;
  int ndim;
  const int64_t* shape;
  size_t nbytes;
} ep_tensor_info;

/* Loads the artifact folder (manifest.json, model.so) onto its device: the CPU, or GPU 0 for
 * a cuda artifact. Always sets *model (NULL only when out of memory); on failure returns
 * EP_ERROR and ep_error(*model) says why. Free it with ep_free either way. */
EP_API int ep_load(const char* folder, ep_model** model);

/* Why the last call on `model` failed, or NULL when it succeeded. */
EP_API const char* ep_error(const ep_model* model);

EP_API int ep_num_inputs(const ep_model* model);
EP_API int ep_num_outputs(const ep_model* model);

/* The index-th input's or output's description (outputs: their shapes after the last
 * ep_run, before it the manifest's). */
EP_API int ep_input_info(ep_model* model, int index, ep_tensor_info* info);
EP_API int ep_output_info(ep_model* model, int index, ep_tensor_info* info);

/* Copies `nbytes` (exactly the input's size) of row-major data into the named input. */
EP_API int ep_set_input(ep_model* model, const char* name, const void* data, size_t nbytes);

/* Runs the model on the inputs set so far (every input must have been set once). */
EP_API int ep_run(ep_model* model);

/* Copies the named output of the last ep_run into `data` (`nbytes`: its exact size). */
EP_API int ep_get_output(ep_model* model, const char* name, void* data, size_t nbytes);

EP_API void ep_free(ep_model* model);

#ifdef __cplusplus
}
#endif

#endif /* EDGEPRESS_H_ */
