export { makeTmpDir } from "../../src/common/tmpDir.js";
