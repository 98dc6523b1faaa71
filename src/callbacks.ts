/** Numbers reported after a batch or an epoch: `loss`, and `val_loss` once validation ran. */
export type Logs = Record<string, number>;

/**
 * Hooks `fit` calls as training runs. Each may return a promise, which `fit` awaits. Set
 * `model.stopTraining = true` from any hook to end training after the current batch.
 */
export interface Callbacks {
  /** Before the first epoch. */
  onTrainBegin?: (logs: Logs) => void | Promise<void>;
  /** After the last epoch (or when training stopped). */
  onTrainEnd?: (logs: Logs) => void | Promise<void>;
  /** Before each epoch (0-based). */
  onEpochBegin?: (epoch: number, logs: Logs) => void | Promise<void>;
  /** After each epoch, with the epoch's mean `loss` and, with validation, `val_loss`. */
  onEpochEnd?: (epoch: number, logs: Logs) => void | Promise<void>;
  /** Before each batch (0-based within the epoch). */
  onBatchBegin?: (batch: number, logs: Logs) => void | Promise<void>;
  /** After each batch, with its `loss` and `size` (rows). */
  onBatchEnd?: (batch: number, logs: Logs) => void | Promise<void>;
}

/** What `fit` returns: the epochs run and, per key, one value per epoch. */
export interface History {
  /** Epoch indices that ran. */
  epoch: number[];
  /** `loss` and, with validation, `val_loss`; one value per epoch. */
  history: Record<string, number[]>;
}
