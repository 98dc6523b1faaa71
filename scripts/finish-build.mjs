// After tsc has written the ESM build (dist/) and the CommonJS one (dist/cjs/): copies the loaders tsc does not
// emit (the generated native.cjs and the hand-written binding.cjs, with their types) and, in a source checkout,
// the built addon into dist/. dist/cjs/ gets forwarders to them, so the ESM and CJS builds share one addon
// instance, and a package.json that marks its .js files as CommonJS.
import { copyFileSync, existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const loaders = ['native.cjs', 'native.d.cts', 'binding.cjs', 'binding.d.cts'];
for (const f of readdirSync('src')) {
  if (loaders.includes(f) || f.endsWith('.node')) copyFileSync(join('src', f), join('dist', f));
}
for (const f of loaders) {
  if (!existsSync(join('dist', f))) throw new Error(`finish-build: src/${f} is missing; run npm run build:native first`);
}
writeFileSync('dist/cjs/package.json', `${JSON.stringify({ type: 'commonjs' }, null, 2)}\n`);
writeFileSync('dist/cjs/native.cjs', "module.exports = require('../native.cjs');\n");
writeFileSync('dist/cjs/native.d.cts', "export * from '../native.cjs';\n");
writeFileSync('dist/cjs/binding.cjs', "module.exports = require('../binding.cjs');\n");
writeFileSync('dist/cjs/binding.d.cts', "import binding = require('../binding.cjs');\nexport = binding;\n");
