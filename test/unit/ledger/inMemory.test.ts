import { getInMemoryEventStore } from "../../../src/ledger/index.js";
import { eventStoreContract } from "./eventStoreContract.js";

eventStoreContract("in-memory", () => getInMemoryEventStore());
