/**
 * Optimizers with PyTorch's update rules, and gradient clipping applied before each update.
 * @module
 */

/** Gradient clipping, available on every optimizer. */
export interface ClipOptions {
  /** Scale all gradients together so their global L2 norm is at most this (as `clip_grad_norm_`). */
  clipNorm?: number;
  /** Clamp each gradient value to `[-clipValue, clipValue]` (applied before `clipNorm`). */
  clipValue?: number;
}

/** Stochastic gradient descent, as `torch.optim.SGD`. */
export interface SgdOptions extends ClipOptions {
  /** Default 0.01. */
  learningRate?: number;
  /** Default 0. */
  momentum?: number;
  /** Default 0. */
  dampening?: number;
  /** Nesterov momentum (needs momentum > 0, dampening 0). Default false. */
  nesterov?: boolean;
  /** L2 penalty added to the gradient. Default 0. */
  weightDecay?: number;
  /** Parameters whose names contain any of these strings get no weight decay, e.g. `['bias', 'norm']`. */
  excludeFromWeightDecay?: string[];
}

/** Adam, as `torch.optim.Adam`; `weightDecay` is an L2 penalty added to the gradient. */
export interface AdamOptions extends ClipOptions {
  /** Default 0.001. */
  learningRate?: number;
  /** Default 0.9. */
  beta1?: number;
  /** Default 0.999. */
  beta2?: number;
  /** Default 1e-8. */
  epsilon?: number;
  /** Default 0 for adam, 0.01 for adamw. */
  weightDecay?: number;
  /**
   * Parameters whose names contain any of these strings get no weight decay (as a PyTorch parameter group with
   * `weight_decay=0`), e.g. `['bias', 'norm']` to decay only the weight matrices, as GPT-2 and nanoGPT do.
   */
  excludeFromWeightDecay?: string[];
}

/** SGD as a spec. */
export interface SgdSpec extends SgdOptions {
  /** Selects the optimizer. */
  type: 'sgd';
}

/** Adam or AdamW as a spec. */
export interface AdamSpec extends AdamOptions {
  /** Selects the optimizer: `adam` (L2 penalty) or `adamw` (decoupled weight decay). */
  type: 'adam' | 'adamw';
}

/** An optimizer spec, as made by {@link optimizers}. */
export type OptimizerSpec = SgdSpec | AdamSpec;

/** Builders for optimizer specs, to pass to `model.compile`. */
export const optimizers = {
  /** SGD with optional (Nesterov) momentum. */
  sgd: (options: SgdOptions = {}): OptimizerSpec => ({ type: 'sgd', ...options }),
  /** Adam with an L2 penalty. */
  adam: (options: AdamOptions = {}): OptimizerSpec => ({ type: 'adam', ...options }),
  /** AdamW: Adam with decoupled weight decay (Loshchilov and Hutter 2019), as `torch.optim.AdamW`. */
  adamw: (options: AdamOptions = {}): OptimizerSpec => ({ type: 'adamw', ...options }),
};
