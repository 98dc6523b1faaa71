'use strict';
// napi build imports this module for every .wasm artifact, so loading it must work; using it throws, and the CLI
// then warns and ships cargo's .wasm as it is (with its name section, about 10% larger).
class ModuleConfig {
  constructor() {
    throw new Error('@napi-rs/wasm-tools is stubbed out in engram (package.json overrides); install the real package to strip the .wasm');
  }
}
module.exports = { ModuleConfig };
