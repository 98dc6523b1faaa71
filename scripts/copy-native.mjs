// Copies the generated native loader, its types and the built addon from src/ into dist/ after tsc.
import { copyFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

for (const f of readdirSync('src')) {
  if (f === 'native.js' || f === 'native.d.ts' || f.endsWith('.node')) copyFileSync(join('src', f), join('dist', f));
}
